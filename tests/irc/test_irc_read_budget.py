"""IRC ``WHOIS`` (a ``users`` read) spends the session's read budget, as native reads do
(``tests/test_read_budget.py``): beyond it the client gets ``FAIL WHOIS RATE_LIMITED``, not
a false "No such nick"."""

from __future__ import annotations

from conftest import Servers
from irc_client import IrcClient


async def test_irc_whois_spends_the_read_budget(servers: Servers) -> None:
    server = await servers.start(irc_port=0, read_rate=0.001, read_burst=2)
    irc = await IrcClient.open(server.irc_ports[0])
    try:
        await irc.register("whoer")
        for _ in range(2):
            irc.send("WHOIS whoer")
            assert (await irc.expect("311")).params[1] == "whoer"
            await irc.expect("318")
        irc.send("WHOIS whoer")
        refused = await irc.expect("FAIL")
        assert refused.params[:2] == ["WHOIS", "RATE_LIMITED"], refused.raw
        await irc.expect("318")
    finally:
        await irc.close()
