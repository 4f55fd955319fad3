"""One-time claim codes: the cloud stores an encrypted device bundle under the SHA-256 of a
code it never sees, and hands the ciphertext out once."""

from datetime import datetime
from typing import Annotated

from pydantic import Field, StrictInt

from cloud.models.common import Input, Output
from contracts.numbers import WHOLE_NUMBER

CodeHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Base64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]+={0,2}$")]

CLAIM_TTL_DEFAULT_S = 900
CLAIM_TTL_MAX_S = 3600


class ClaimCreate(Input):
    # A device bundle is well under 1 KiB; the bound keeps the table from becoming storage.
    ciphertext: Annotated[Base64, Field(min_length=24, max_length=16384)]
    nonce: Annotated[Base64, Field(min_length=16, max_length=16)]  # 12 bytes
    code_hash: CodeHash
    ttl_s: Annotated[StrictInt, Field(ge=60, le=CLAIM_TTL_MAX_S), WHOLE_NUMBER] = (
        CLAIM_TTL_DEFAULT_S
    )


class ClaimOut(Output):
    id: str
    machine_id: str
    expires_at: datetime
    created_at: datetime


class ClaimRedeem(Input):
    code_hash: CodeHash


class ClaimBundle(Output):
    machine_id: str
    ciphertext: str
    nonce: str
    expires_at: datetime
