"""A request whose URL aiohttp refuses fails with a text that does not repeat the URL: channel
and heartbeat URLs hold secrets (a Discord webhook token, a healthchecks.io check id), and
the error text is logged and published with the delivery result."""

from __future__ import annotations

import pytest

from signalfire.notifier.channels.base import DeliveryError
from signalfire.notifier.channels.http import get, new_session, post

SECRET = "c0ffee-secret-token"


@pytest.mark.parametrize(
    "url", [f"http://127.0.0.1:99999/{SECRET}", f"http://[::1/{SECRET}", f"http://host:port/{SECRET}"]
)
async def test_a_url_that_is_not_valid_is_refused_without_repeating_it(url: str) -> None:
    http = new_session()
    try:
        for request in (get(http, url, timeout=2), post(http, url, timeout=2, json={"a": 1})):
            with pytest.raises(DeliveryError) as error:
                await request
            assert str(error.value) == "request failed: the URL is not valid"
            assert not error.value.retryable
    finally:
        await http.close()
