// Tokenizes files with the TextMate grammar as VS Code does (vscode-textmate, oniguruma):
//   node test/tokenize.js FILE...  ->  JSON: {file: [[{start, end, scopes}...] per line]}
const fs = require("fs");
const path = require("path");
const vsctm = require("vscode-textmate");
const oniguruma = require("vscode-oniguruma");

const wasm = fs.readFileSync(require.resolve("vscode-oniguruma/release/onig.wasm")).buffer;
const onig = oniguruma.loadWASM(wasm).then(() => ({
  createOnigScanner: (patterns) => new oniguruma.OnigScanner(patterns),
  createOnigString: (text) => new oniguruma.OnigString(text),
}));
const registry = new vsctm.Registry({
  onigLib: onig,
  loadGrammar: async (scope) =>
    scope === "source.cnn"
      ? vsctm.parseRawGrammar(
          fs.readFileSync(path.join(__dirname, "..", "syntaxes", "cnn.tmLanguage.json"), "utf8"),
          "cnn.tmLanguage.json")
      : null,
});

registry.loadGrammar("source.cnn").then((grammar) => {
  const out = {};
  for (const file of process.argv.slice(2)) {
    let state = vsctm.INITIAL;
    out[file] = fs.readFileSync(file, "utf8").split("\n").map((line) => {
      const result = grammar.tokenizeLine(line, state);
      state = result.ruleStack;
      return result.tokens.map((t) => ({ start: t.startIndex, end: t.endIndex, scopes: t.scopes }));
    });
  }
  process.stdout.write(JSON.stringify(out));
});
