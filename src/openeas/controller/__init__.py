"""Controllers that converge the world to the store: reconciler, replica supervisors, rollouts."""

from openeas.controller.rollout import ReplicaView, RolloutPlan, plan_rollout, restart_backoff_s

__all__ = ["ReplicaView", "RolloutPlan", "plan_rollout", "restart_backoff_s"]
