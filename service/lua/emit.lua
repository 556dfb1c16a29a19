-- Publish an event that comes with no Redis state change (key.rotated).
-- KEYS: (common head: epoch gen events fence)
-- ARGV: (known_epoch known_gen retention) json-object-of-the-event
-- Returns the event's stream id.
return emit(cjson.decode(ARGV[4]))
