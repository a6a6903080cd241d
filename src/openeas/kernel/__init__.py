"""The kernel: the values every layer shares, standard library only.

Replica and service states (:mod:`.states`), the routing record (:mod:`.routing`, :mod:`.groups`,
:mod:`.queue`), a staged rollout's plan, state and decision (:mod:`.rollout`), a replica's probe
and warmup results (:mod:`.checks`) and the one clock (:mod:`.clock`). It imports nothing of
OpenEAS's own but itself, so anything may import it (docs/architecture.md). Importing the package
loads none of its modules: the gateway process stays small.
"""
