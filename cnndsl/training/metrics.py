"""Classification metrics from torchmetrics (not hand-written formulas), as plain JSON
values, and their text table."""

from __future__ import annotations

import torch


def classification_report(logits: torch.Tensor, targets: torch.Tensor,
                          classes: list[str]) -> dict:
    """Accuracy, top-5 (over five classes), macro / weighted / per-class precision, recall
    and F1 (0 where undefined, as scikit-learn's zero_division=0), the confusion matrix
    (rows = true class)."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )
    n = len(classes)
    logits, targets = logits.float(), targets.long()
    report: dict = {"samples": len(targets), "accuracy": float(multiclass_accuracy(
        logits, targets, num_classes=n, average="micro"))}
    if n > 5:
        report["top5"] = float(multiclass_accuracy(logits, targets, num_classes=n, top_k=5,
                                                   average="micro"))
    scores = {}
    for key, metric in (("precision", multiclass_precision), ("recall", multiclass_recall),
                        ("f1", multiclass_f1_score)):
        for average in ("macro", "weighted", "none"):
            scores[key, average] = metric(logits, targets, num_classes=n, average=average,
                                          zero_division=0)
    # torchmetrics' macro skips classes absent from both targets and predictions;
    # scikit-learn averages over every class: take the plain mean of the per-class values
    report.update({key: float(scores[key, "none"].mean()) for key in
                   ("precision", "recall", "f1")})
    report["weighted"] = {key: float(scores[key, "weighted"]) for key in
                          ("precision", "recall", "f1")}
    support = torch.bincount(targets, minlength=n)
    report["per_class"] = [
        {"class": name, "precision": float(scores["precision", "none"][i]),
         "recall": float(scores["recall", "none"][i]), "f1": float(scores["f1", "none"][i]),
         "support": int(support[i])} for i, name in enumerate(classes)]
    report["confusion_matrix"] = multiclass_confusion_matrix(
        logits, targets, num_classes=n).tolist()
    return report


def one_line(name: str) -> str:
    """A class name as one table cell: control characters (a newline) written as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def format_report(report: dict) -> str:
    """Per-class rows, averages, accuracy and the confusion matrix as text tables."""
    rows = [{**r, "class": one_line(r["class"])} for r in report["per_class"]]
    width = max(12, *(len(r["class"]) for r in rows))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for r in rows:
        lines.append(f"{r['class']:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  "
                     f"{r['f1']:6.4f}  {r['support']:7d}")
    total = sum(r["support"] for r in rows)
    lines.append(f"{'macro avg':<{width}}  {report['precision']:9.4f}  {report['recall']:6.4f}"
                 f"  {report['f1']:6.4f}  {total:7d}")
    w = report["weighted"]
    lines.append(f"{'weighted avg':<{width}}  {w['precision']:9.4f}  {w['recall']:6.4f}  "
                 f"{w['f1']:6.4f}  {total:7d}")
    lines.append("")
    lines.append(f"accuracy {report['accuracy']:.4f}" + (
        f", top-5 {report['top5']:.4f}" if "top5" in report else ""))
    lines.append("")
    lines.append("confusion matrix (rows: true class, columns: predicted)")
    lines += confusion_table([r["class"] for r in rows], report["confusion_matrix"], width)
    return "\n".join(lines)


def confusion_table(names: list[str], matrix: list[list[int]], width: int) -> list[str]:
    """A confusion matrix as text: a header of class names, a row a true class, the names
    (already one line each) in a column `width` wide."""
    cell = max(5, *(len(str(v)) for row in matrix for v in row), *(len(n) for n in names))
    lines = [" " * width + "  " + " ".join(f"{n:>{cell}}" for n in names)]
    for name, row in zip(names, matrix):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row))
    return lines
