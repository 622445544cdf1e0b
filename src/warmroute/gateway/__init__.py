"""The gateway: conversation-sticky, load-bounded routing of Chat Completions over engines.

features (routing key, keyless affinity) → policies (pure placement) → proxy (forward, fail
over before the first byte) over membership (health, in-flight) kept by health (probes);
router wires them, metrics counts, launch and serve start them. The web routes live in
`warmroute.api.gateway_app`.
"""
