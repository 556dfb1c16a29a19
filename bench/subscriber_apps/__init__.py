"""Bare apps for ``python -m bench subscribers``: each framework's ceiling.

One file per framework, served the way its example in examples/ is served (same server,
same worker count, same HOST/PORT/WORKERS variables), with GET /protected answering a
constant document the size and shape of the claims the examples answer with
(``_document.py``) and no tokend at all, and GET /healthz. Every response carries
``X-Worker-Pid``, as the examples' do.
"""
