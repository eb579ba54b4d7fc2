"""The language server (`cnndsl lsp`): shapes as you type, diagnostics, navigation.

`analysis` checks a document with the project's own checker; `features` answers each
request from that analysis; `server` speaks the protocol (pygls) over stdio.
"""
