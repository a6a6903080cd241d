"""The control loop: the reconciler converges replicas to the store's desired state, one supervisor
task per replica runs its life, and pure decisions (rollout plans, restart backoff, probe
tracking) sit apart from the I/O (probes, warmup). Processes are reached only through a
``openeas.runtime.Runtime``; the package exports the pure rollout decisions."""

from openeas.controller.rollout import ReplicaView, RolloutPlan, plan_rollout, restart_backoff_s

__all__ = ["ReplicaView", "RolloutPlan", "plan_rollout", "restart_backoff_s"]
