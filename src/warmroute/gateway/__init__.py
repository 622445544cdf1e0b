"""The gateway: conversation-sticky, cache-aware, load-bounded routing of requests over engines.

auth (keys → callers, tenant salts) → features (routing key, prompt digests) → placement /
policies (pure decisions) → proxy (forward, fail over before the first byte, resume) over
membership (health, in flight) kept by health (probes); metering and the stream meter price
and record; `gateway.Gateway` wires them. Surfaces live in `warmroute.api`, assembly in
`warmroute.app`.
"""
