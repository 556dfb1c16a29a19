-- Publish an event that comes with no Redis state change (key.rotated).
-- ARGV: prefix retention json-object-of-the-event
local ev = cjson.decode(ARGV[3])
return emit(ARGV[1] .. ':events', ARGV[1] .. ':revocations', ARGV[2], ev)
