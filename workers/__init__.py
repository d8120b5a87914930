"""Workers: what runs on a GPU host (registration, heartbeat, launcher, SDK, recipes)."""
