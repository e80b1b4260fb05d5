"""The policy: VLM backbone, prompt, ACT queries, gated cross-attention, action heads, checkpoints."""
