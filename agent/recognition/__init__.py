"""Where faces become identities: the live `recognizer` (tracks, decisions, `events` with cooldowns),
face `quality`, and `enrollment` (photos become templates). Knows nothing of commands or the MQTT link."""
