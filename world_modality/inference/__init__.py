"""The policy's inference interface, `reset` then `select_action` per frame (`episode.EpisodeRunner`), over a
checkpoint loaded here (`runner.PolicyRunner`) or one served elsewhere (`remote.RemoteRunner`)."""
