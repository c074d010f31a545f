"""Two pjsua2 user agents driven over stdin, for tests/e2e/test_pjsua2_watcher.py.

Run as a subprocess (pjsip's library state is global and every thread that calls it must
be registered, so it stays out of the pytest process):

    python pjsua2_agents.py --proxy 'sip:127.0.0.1:5060;lr' --log pjsua.log [--transport tcp]

Two accounts, no registrar, both sending every request through the proxy (our server):
alice publishes presence (PUBLISH enabled on the account), bob subscribes to alice as a
buddy. Everything runs on this one thread: no worker threads, callbacks delivered from
`libHandleEvents`, which the loop below calls between reads of stdin.

Commands, one per line on stdin:

    subscribe                      bob adds sip:alice@example.com as a buddy, subscription on
    online TEXT...                 alice: setOnlineStatus(online, statusText TEXT)
    offline TEXT...                alice: setOnlineStatus(offline, statusText TEXT)
    away TEXT...                   alice: online with activity "away" and statusText TEXT
    quit                           delete the buddy and the accounts, destroy the library

Lines printed on stdout (flushed), each a single line:

    READY                          the library is started and both accounts exist
    OK <command>                   the command was carried out (its requests are under way)
    BUDDY <status> <activity> sub=<state> text=<statusText> note=<note>   alice's state
    EVSUB sub=<state> code=<code> reason=<reason>                onBuddyEvSubState
    ERROR <text>                   a pjsua2 call raised
    BYE                            the library is destroyed
"""

from __future__ import annotations

import argparse
import os
import select
import sys

import pjsua2 as pj

ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
STATUS = {pj.PJSUA_BUDDY_STATUS_UNKNOWN: "unknown", pj.PJSUA_BUDDY_STATUS_ONLINE: "open",
          pj.PJSUA_BUDDY_STATUS_OFFLINE: "closed"}
ACTIVITY = {pj.PJRPID_ACTIVITY_UNKNOWN: "-", pj.PJRPID_ACTIVITY_AWAY: "away",
            pj.PJRPID_ACTIVITY_BUSY: "busy"}


def say(line: str) -> None:
    sys.stdout.write(line.replace("\n", " ") + "\n")
    sys.stdout.flush()


class Watched(pj.Buddy):
    """Bob's buddy entry for alice: prints every change pjsua2 reports."""

    def onBuddyState(self) -> None:
        info = self.getInfo()
        pres = info.presStatus
        say(f"BUDDY {STATUS.get(pres.status, pres.status)} "
            f"{ACTIVITY.get(pres.activity, pres.activity)} sub={info.subStateName} "
            f"text={pres.statusText} note={pres.note}")

    def onBuddyEvSubState(self, prm) -> None:
        info = self.getInfo()
        say(f"EVSUB sub={info.subStateName} code={info.subTermCode} "
            f"reason={info.subTermReason or '-'}")


class Agent(pj.Account):
    pass


def transport(ep: pj.Endpoint, kind: str, host: str) -> int:
    config = pj.TransportConfig()
    config.port = 0  # any free port
    config.boundAddress = host
    config.publicAddress = host
    return ep.transportCreate(pj.PJSIP_TRANSPORT_TCP if kind == "tcp" else pj.PJSIP_TRANSPORT_UDP,
                              config)


def account(uri: str, proxy: str, transport_id: int, publish: bool, priority: int) -> Agent:
    config = pj.AccountConfig()
    config.idUri = uri
    # pjsua2's Buddy.create(account, ...) does not tie the buddy to that account: pjsua
    # picks the account for its SUBSCRIBE by matching the buddy's domain against every
    # account, highest priority first (pjsua_acc_find_for_outgoing). alice and bob share
    # example.com, so bob must outrank alice or bob's buddy would subscribe as alice.
    config.priority = priority
    config.regConfig.registrarUri = ""  # no registrar: nothing to register with
    config.sipConfig.proxies.append(proxy)
    config.sipConfig.transportId = transport_id
    config.presConfig.publishEnabled = publish
    agent = Agent()
    agent.create(config)
    return agent


def presence(status: int, text: str, activity: int = pj.PJRPID_ACTIVITY_UNKNOWN) \
        -> pj.PresenceStatus:
    value = pj.PresenceStatus()
    value.status = status
    value.statusText = text
    value.note = text  # what pjsua2 publishes: the RPID person's <note>
    value.activity = activity
    return value


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy", required=True,
                        help="outbound proxy, e.g. sip:127.0.0.1:5060;lr")
    parser.add_argument("--host", default="127.0.0.1", help="address the agents bind to")
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp",
                        help="the agents' transport (the proxy URI should say ;transport=tcp)")
    parser.add_argument("--log", help="pjsip log file (level 5, every SIP message)")
    args = parser.parse_args()

    ep = pj.Endpoint()
    ep.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    config.uaConfig.userAgent = "pjsua2-e2e"
    config.logConfig.consoleLevel = 0
    config.logConfig.level = 5 if args.log else 0
    if args.log:
        config.logConfig.filename = args.log
    config.medConfig.threadCnt = 0
    ep.libInit(config)
    ep.audDevManager().setNullDev()
    alice_tp = transport(ep, args.transport, args.host)
    bob_tp = transport(ep, args.transport, args.host)
    ep.libStart()

    alice = account(ALICE, args.proxy, alice_tp, publish=True, priority=0)
    bob = account(BOB, args.proxy, bob_tp, publish=False, priority=1)
    buddy: Watched | None = None
    say("READY")

    commands = {
        "online": lambda text: alice.setOnlineStatus(
            presence(pj.PJSUA_BUDDY_STATUS_ONLINE, text)),
        "offline": lambda text: alice.setOnlineStatus(
            presence(pj.PJSUA_BUDDY_STATUS_OFFLINE, text)),
        "away": lambda text: alice.setOnlineStatus(
            presence(pj.PJSUA_BUDDY_STATUS_ONLINE, text, pj.PJRPID_ACTIVITY_AWAY)),
    }
    stdin, pending, running = sys.stdin.fileno(), b"", True
    while running:
        ep.libHandleEvents(20)
        ready, _, _ = select.select([stdin], [], [], 0)
        if not ready:
            continue
        chunk = os.read(stdin, 4096)
        if not chunk:
            break  # the test went away: shut down as for quit
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode().strip()
            if not line:
                continue
            verb, _, rest = line.partition(" ")
            try:
                if verb == "quit":
                    running = False
                    break
                if verb == "subscribe":
                    buddy_config = pj.BuddyConfig()
                    buddy_config.uri = ALICE
                    buddy_config.subscribe = True
                    buddy = Watched()
                    buddy.create(bob, buddy_config)
                elif verb in commands:
                    commands[verb](rest)
                else:
                    say(f"ERROR unknown command {line!r}")
                    continue
            except pj.Error as error:
                say(f"ERROR {verb}: {error.info()}")
                continue
            say(f"OK {verb}")

    # Deleting the buddy unsubscribes, deleting alice unpublishes; libDestroy waits for both.
    for _ in range(10):
        ep.libHandleEvents(20)
    del buddy
    del bob
    del alice
    ep.libDestroy()
    say("BYE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
