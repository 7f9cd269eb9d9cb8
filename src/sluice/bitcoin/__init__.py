"""Bitcoin adapters: the node's JSON-RPC client (``rpc``), the custody wallet over embit
(``wallet``), embit's view of the chain parameters (``params``) and the in-memory chain that stands
in for a node on the embedded defaults (``fakechain``)."""
