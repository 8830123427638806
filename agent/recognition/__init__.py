"""Where faces become identities: the live `recognizer` (tracks, decisions, `events` with cooldowns),
face `quality`, and `enrolment` (photos become templates). Knows nothing of commands or the MQTT link."""
