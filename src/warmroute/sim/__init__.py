"""`warmroute simulate`: a discrete-event simulation of routing at fleet scale.

Simulated engines keep the real `BlockPool`/`PrefixCache` accounting (no tensors, no HTTP);
placement calls the gateway's own `policies` functions with the clock and randomness injected.
"""
