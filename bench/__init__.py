"""tokend's benchmarks: ``python -m bench all`` (see __main__.py).

harness.py         processes on free ports, tokend, sessions, wrk, statistics
contenders.py      the refresh contenders (tokend, peers, ceilings), one process each
peers/             simplejwt (Django) and flask-jwt-extended apps, run under gunicorn
bare_app.py        bare aiohttp JSON;  minimal_refresh.py  the minimal refresh handler
refresh.lua        wrk: follow each session's refresh-token chain; request.lua: one request
tokens.lua         wrk: GET with many bearer tokens in turn (verified-token cache misses)
throughput.py      (1) refresh, all contenders; (2) login and refresh under logins
subscriber.py      (3) verification at the example service; (4) propagation and replay
redis_state.py     (5) expiry sweep; (6) Redis memory per session
profile.py         (7) py-spy profiles: where the time goes
report.py          markdown sections and the targets, printed, never asserted
"""
