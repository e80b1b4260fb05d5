"""Closed-loop evaluation: drives a policy in the simulator through one small interface
(observation dict in, action chunk out); episodes go to an append-only JSONL."""
