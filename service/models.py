"""SQLAlchemy models: users, their external identities, and signing keys."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)
    password_changed_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class IdentityRow(Base):
    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_identities_issuer_subject"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    provider: Mapped[str] = mapped_column(String(64), nullable=False)
    issuer: Mapped[str] = mapped_column(String(512), nullable=False)
    subject: Mapped[str] = mapped_column(String(255), nullable=False)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)


class SigningKeyRow(Base):
    __tablename__ = "signing_keys"

    # A unique, increasing generation makes key creation race-free across processes:
    # two rotators inserting the same generation cannot both win.
    generation: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kid: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    alg: Mapped[str] = mapped_column(String(16), nullable=False)
    public_jwk: Mapped[str] = mapped_column(Text, nullable=False)
    private_sealed: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)
    activates_at: Mapped[float] = mapped_column(Float, nullable=False)
    retires_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class RedisPositionRow(Base):
    """The highest Redis data position tokend has seen, per key prefix (see fence.py)."""

    __tablename__ = "redis_positions"

    prefix: Mapped[str] = mapped_column(String(200), primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, nullable=False)
    gen: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)
