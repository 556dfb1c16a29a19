"""The OpenAPI description, written next to the routes: the ``doc`` machinery
(``core``), the shared components, and one module of operation descriptions per area."""
