"""The peers tokend is measured against, each a small app run under gunicorn (one worker)."""
