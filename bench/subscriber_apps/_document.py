"""What each bare app answers on GET /protected: a document of the shape and size of the
claims the examples answer with (tokend's access-token claims), so that the ratio measures
the protection and not a shorter JSON body."""

from __future__ import annotations

DOCUMENT = {
    "iss": "http://127.0.0.1:8080",
    "sub": "0b8f3a52-6c1e-4d6f-9a57-3c2d1e0f4b6a",
    "aud": "tokend",
    "exp": 1796141748,
    "iat": 1796140848,
    "jti": "Xq3vN8rT2kLm9pQw4sYz1A",
    "sid": "Hb7cK2nR5tVx8zQa3mWe6Q",
    "auth_time": 1796140847.123456,
}
