"""Training and evaluation from a spec: `cnndsl train`, `cnndsl eval`, `Model.fit`."""
