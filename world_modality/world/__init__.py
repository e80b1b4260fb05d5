"""World modality: frozen video encoders, the on-disk latent cache, and the Prophet that predicts future latents."""
