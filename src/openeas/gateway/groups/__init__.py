"""Service groups in the gateway: the groups of a routing table (`group_table`), how a request
finds its member (`split`), mirrored copies to a candidate (`mirror`) and per-member metrics
(`group_metrics`)."""
