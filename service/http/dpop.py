"""DPoP over HTTP (RFC 9449): the ``DPoP`` header, the URL a proof must name, the key a
token request or a protected resource's request proves, and the ``DPoP-Nonce`` header.

The ``htu`` of a proof is tokend's public URL: the origin of ``TOKEND_ISSUER`` (tokend may
sit behind a proxy; the Host it sees is not what the client called) and the request's
path, without query. The checks themselves are ``service.dpop``'s.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from ..browser_settings import issuer_origin
from ..dpop import DPoPServer
from ..errors import InvalidDPoPProof, InvalidResourceProof, TokendError
from .appkeys import DPOP, SETTINGS
from .errors import Handler

DPOP_HEADER = "DPoP"
NONCE_HEADER = "DPoP-Nonce"


def proof_header(request: web.Request, *, resource: bool = False) -> str | None:
    """The request's one ``DPoP`` header (RFC 9449 section 4.3: exactly one), None when
    there is none."""
    values = request.headers.getall(DPOP_HEADER, [])
    if len(values) > 1:
        error: type[TokendError] = InvalidResourceProof if resource else InvalidDPoPProof
        raise error("more than one DPoP header")
    return values[0].strip() if values else None


def public_url(request: web.Request) -> str:
    """The URL the client called, as a proof's ``htu`` names it."""
    return issuer_origin(request.app[SETTINGS].issuer) + request.rel_url.raw_path


async def token_key(request: web.Request, *, required: bool, honoured: bool = True) -> str:
    """The DPoP key a token request proves ("" for none): its tokens are bound to it.

    ``required``: no proof is a 400 ``invalid_dpop_proof``; ``honoured=False``: the
    header is ignored (TOKEND_DPOP=off).
    """
    proof = proof_header(request) if honoured else None
    if proof is None:
        if required:
            raise InvalidDPoPProof("this token request needs a DPoP proof (the DPoP header)")
        return ""
    server: DPoPServer = request.app[DPOP]
    return await server.check(proof, method=request.method, url=public_url(request))


async def resource_key(request: web.Request, access_token: str) -> str:
    """The DPoP key a protected resource's request proves for ``access_token``
    (``Authorization: DPoP``): a proof is required and its ``ath`` must match."""
    proof = proof_header(request, resource=True)
    if proof is None:
        raise InvalidResourceProof("the DPoP scheme needs a DPoP proof (the DPoP header)")
    server: DPoPServer = request.app[DPOP]
    return await server.check(
        proof,
        method=request.method,
        url=public_url(request),
        access_token=access_token,
        resource=True,
    )


def _dpop_scheme(request: web.Request) -> bool:
    """Whether the request's Authorization uses the DPoP scheme (its proof may be missing)."""
    value = request.headers.get(hdrs.AUTHORIZATION, "")
    return value[:5].lower() == "dpop "


@web.middleware
async def nonce_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With TOKEND_DPOP_NONCE, every answer to a DPoP request (a ``DPoP`` header or the
    DPoP scheme; errors too: this runs outside the error middleware) carries a fresh
    ``DPoP-Nonce``."""
    response = await handler(request)
    if DPOP_HEADER in request.headers or _dpop_scheme(request):
        nonce = request.app[DPOP].nonce()
        if nonce is not None:
            response.headers[NONCE_HEADER] = nonce
    return response
