"""Reliability tests: faults, bad input, load (`pytest -m reliability`; the soak test: `pytest -m soak`).

The guarantees they check:
- Delivery is at-least-once with idempotent ids (the embedded broker, Tansu, has no idempotent or
  transactional producers, so exactly-once is not claimed). Every trigger yields a forecast whose `id`
  is a hash of (symbol, T, trigger, news id); a consumer that deduplicates by `id` sees exactly one per
  trigger. Duplicates on the wire come only from crashes: the inference worker commits after publishing
  (a crash re-scores at most one uncommitted batch per partition), the agents re-send the triggers at or
  after their last checkpoint's `resume_ns` (at most CHECKPOINT_EVERY_S of triggers per partition).
- After kill -9 the agents rebuild windows, news and held triggers from their Redis checkpoint
  (agents.recovery), so forecasts equal an undisturbed run's. Without Redis at crash time they resume
  from the committed offsets with empty windows (forecasts in the first window after restart differ).
- A restarted worker is forecasting again within ~30 s on a 2-core box: process start (importing torch
  and transformers, 15-30 s) plus a group rejoin of ~3 s (session timeouts 6 s).
- Redis down: forecasts keep flowing; the latest view and agent checkpoints are skipped, logged and
  counted (finllm_redis_errors{use}); both catch up when Redis returns.
- Broker restart (memory storage): topics, records in flight and committed offsets are lost; workers
  reconnect and rejoin by themselves; readers without a group must restart or seek to the start.
"""
