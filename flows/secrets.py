"""The API key of a run, read from a Prefect Secret block.

Called by the ``embed-documents`` flow right after the settings are loaded. When
``api.api_key_secret_block`` names a Prefect Secret block, the key stored there becomes
``api.api_key`` (a ``SecretStr``) for this run, ahead of ``api.api_key`` from the YAML file and
``OPENAI_API_KEY``. Without that setting the settings pass through unchanged, so the key still
comes from the environment (``OPENAI_API_KEY`` or ``TIEREMBED_API__API_KEY``).

The key itself is never logged, never put in an error message and never returned outside a
``SecretStr``; only the block's name is. Create the block once per Prefect server::

    from prefect.blocks.system import Secret
    Secret(value="sk-...").save("openai-api-key", overwrite=True)

Any client of the Prefect API can read a Secret block in plain text: protect the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from pydantic import SecretStr

from tiering.errors import ConfigError
from tiering.settings import TierembedSettings

if TYPE_CHECKING:
    from prefect.blocks.system import Secret

__all__ = ["SecretLoader", "load_prefect_secret", "resolve_api_key"]

_log = logging.getLogger(__name__)

SecretLoader = Callable[[str], str]
"""Reads the string stored in the named secret; raises :class:`ConfigError` when it cannot."""


def load_prefect_secret(name: str) -> str:
    """The string in the Prefect Secret block ``name``, read through the Prefect API."""
    from prefect.blocks.system import Secret

    try:
        # _sync (taken by Prefect's async_dispatch, unknown to the stubs): a plain call even
        # when the caller has an event loop running.
        block = cast("Secret[Any]", Secret.load(name, _sync=True))  # type: ignore[call-arg]
    except ValueError as exc:  # Prefect's "Unable to find block document named ..."
        raise ConfigError(
            f"api.api_key_secret_block is {name!r} but the Prefect API has no Secret block of "
            f"that name ({type(exc).__name__}); create it with "
            f"`Secret(value='sk-...').save({name!r})` (prefect.blocks.system) or in the UI "
            "under Blocks, or unset api.api_key_secret_block to use OPENAI_API_KEY"
        ) from None
    value = block.get()
    if isinstance(value, str):
        return value
    # Secret.get() JSON-decodes strings: a key that parses as JSON (all digits, say) comes
    # back as a number. The stored value is still the string that was saved.
    raw = block.value.get_secret_value()
    if isinstance(raw, str):
        return raw
    raise ConfigError(
        f"the Prefect Secret block {name!r} holds a {type(raw).__name__}, not a string; "
        "store the API key itself as the block's value"
    )


def resolve_api_key(
    settings: TierembedSettings, *, load_secret: SecretLoader = load_prefect_secret
) -> TierembedSettings:
    """Settings whose ``api.api_key`` comes from ``api.api_key_secret_block`` when that is set.

    Returns ``settings`` itself when no block is named. Raises :class:`ConfigError` (naming
    the block, never its value) when the block is missing, empty or not a string.
    """
    name = settings.api.api_key_secret_block
    if name is None:
        return settings
    # Surrounding whitespace (a pasted trailing newline) would break the Authorization header.
    key = load_secret(name).strip()
    if not key:
        raise ConfigError(
            f"the Prefect Secret block {name!r} is empty; save the API key in it, or unset "
            "api.api_key_secret_block to use OPENAI_API_KEY"
        )
    _log.info("API key for the API tier read from the Prefect Secret block %r", name)
    api = settings.api.model_copy(update={"api_key": SecretStr(key)})
    return settings.model_copy(update={"api": api})
