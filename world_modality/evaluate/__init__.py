"""Closed-loop evaluation: drives a policy in the simulator through the inference interface (`inference/`:
observation dict in, action out); episodes go to an append-only JSONL."""
