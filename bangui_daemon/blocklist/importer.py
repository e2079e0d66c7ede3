"""Blocklist imports: exactly once per content, crash-safe, diff-based.

An import takes a source's list (a conditional GET, or the bytes a feed inside the
daemon hands over); a 304 or the same bytes as behind the listing in force is
"unchanged". Otherwise it parses, refuses what must never be banned and claims the
run for (source, content hash); a hash completed before and still listed is
"unchanged" too (an unchanged import bans again what fail2ban lifted meanwhile).
Then it bans only what this source adds and fail2ban does not have yet, in multi-IP
batches, writing the intent ('pending') before each banip and the result after;
unbans what this source dropped if no other source lists it and an import banned
it; and in one transaction stores the new listing and marks the run completed.

Imports of different sources download and parse concurrently; applying a diff (or
removing a source) holds one lock across all sources, since reference counting
reads the other sources' listings. One import at a time per source is the service's
rule (`BlocklistService.import_source`).

A crash anywhere leaves the run pending and fail2ban holding what was banned; the
retry claims the same run, sees those addresses already banned and bans nothing twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from bangui_daemon.archive.db import Archive
from bangui_daemon.archive.import_runs_repo import ImportRunsRepository, complete_run
from bangui_daemon.archive.listings_repo import ListingsRepository, replace_listing
from bangui_daemon.archive.sources_repo import SourceRow, SourcesRepository
from bangui_daemon.archive.state_repo import get_state, put_state
from bangui_daemon.blocklist.fetch import FetchError, FetchResult, check_url, fetch
from bangui_daemon.blocklist.parse import ParseResult, TooManyEntries, parse_blocklist
from bangui_daemon.blocklist.safety import SafetyPolicy
from bangui_daemon.config import BlocklistConfig
from bangui_daemon.errors import BanguiError, InvalidArgument
from bangui_daemon.events import EventHub, ImportFinished, ImportProgress, ImportStarted
from bangui_daemon.fail2ban.ban_rows import await_ban_rows
from bangui_daemon.fail2ban.client import Fail2banClient

log = structlog.get_logger(__name__)

PROGRESS_EVERY = 0.25  # seconds: ImportProgress at most about 4 a second
SECONDS_PER_ENTRY = 0.05  # generous bound of one fail2ban action per address
SAMPLE = 20
COMPLETED, UNCHANGED, FAILED = "completed", "unchanged", "failed"


@dataclass
class ImportOutcome:
    status: str
    run_id: int = 0
    content_hash: str = ""
    entries: int = 0
    added: int = 0
    removed: int = 0
    invalid: int = 0
    refused: int = 0
    error: str = ""
    reapplied: int = 0
    """Listed addresses whose ban fail2ban had lifted, banned again (content unchanged)."""


@dataclass(frozen=True)
class Preview:
    entries: int
    invalid: int
    refused: int
    sample: list[str]
    refused_sample: list[str]
    max_entries: int = 0
    """The cap an import would apply; `entries` above it means the import would fail."""
    invalid_sample: list[str] = field(default_factory=list)
    """A few invalid lines, escaped and cut short: what the list holds that is not kept."""
    below_min_count: int = 0
    """Entries of a counted list (ipsum) left out for a count below the minimum."""


PREVIEW_FACTOR = 4
"""A preview counts up to this many times the cap, so it can say how far over a list is."""


class Importer:
    """Runs imports and source removals against the archive and fail2ban."""

    def __init__(
        self,
        archive: Archive,
        client: Fail2banClient,
        hub: EventHub,
        config: Callable[[], BlocklistConfig],
        fail2ban_timeout: Callable[[], float],
        safety: SafetyPolicy,
        clock: Callable[[], float] = time.time,
        fail2ban_db: Callable[[], str] | None = None,
    ) -> None:
        self.sources = SourcesRepository(archive)
        self.runs = ImportRunsRepository(archive)
        self.listings = ListingsRepository(archive)
        self._archive = archive
        self._client = client
        self._hub = hub
        self._config = config
        self._f2b_timeout = fail2ban_timeout
        self._f2b_db = fail2ban_db
        self._safety = safety
        self._clock = clock
        self._running = 0
        self._quiet_until = 0.0
        # One diff (or source removal) at a time across all sources: reference counting
        # reads the other sources' listings, which an overlapping import has not stored yet.
        self._apply_lock = asyncio.Lock()

    def busy_jail(self) -> str | None:
        """The jail an import is banning into right now (its list is in flux)."""
        return self._config().jail if self._running else None

    def quiet_jail(self) -> str | None:
        """The jail whose changes must not become per-address signals right now."""
        if self._running or self._clock() < self._quiet_until:
            return self._config().jail
        return None

    # ---- download + parse + policy ------------------------------------------

    def check_url(self, url: str) -> None:
        """Refuse now a URL every download of which would be refused (see `check_url`)."""
        check_url(url, self._config().file_dir)

    async def _download(self, url: str, source: SourceRow | None) -> FetchResult:
        cfg = self._config()
        return await fetch(
            url,
            max_bytes=cfg.max_bytes,
            timeout=cfg.timeout,
            file_dir=cfg.file_dir,
            etag=source.etag if source else None,
            last_modified=source.last_modified if source else None,
        )

    def _cap(self, source: SourceRow | None) -> tuple[int, str]:
        """The entry cap of `source` and the config key that sets it."""
        if source is not None and source.max_entries:
            return source.max_entries, f"the source's max_entries (source {source.name!r})"
        return self._config().max_entries, "blocklist.max_entries"

    async def _parse(
        self, chunks: Sequence[bytes], limit: int, key: str = "blocklist.max_entries"
    ) -> ParseResult:
        cfg = self._config()
        try:
            return await asyncio.to_thread(
                parse_blocklist, chunks, min_count=cfg.ipsum_min_count, max_entries=limit
            )
        except TooManyEntries:
            lines = sum(chunk.count(b"\n") for chunk in chunks)
            raise TooManyEntries(
                limit,
                f"the blocklist has more than {limit:,} entries ({lines:,} lines); "
                f"raise {key} to import it",
            ) from None

    async def preview(self, url: str) -> Preview:
        """A dry run: what an import of `url` would ban and refuse; nothing is stored."""
        jail = self._config().jail
        result = await self._download(url, None)
        limit, key = self._cap(None)
        parsed = await self._parse(result.chunks, limit * PREVIEW_FACTOR, key)
        allowed, refused = (await self._safety.policy(jail)).partition(parsed.entries)
        return Preview(
            entries=len(parsed.entries),
            invalid=parsed.invalid,
            refused=len(refused),
            sample=allowed[:SAMPLE],
            refused_sample=[f"{entry} ({reason})" for entry, reason in refused[:SAMPLE]],
            max_entries=limit,
            invalid_sample=parsed.invalid_sample,
            below_min_count=parsed.below_min_count,
        )

    # ---- import -------------------------------------------------------------

    async def import_source(
        self, source: SourceRow, content: Sequence[bytes] | None = None
    ) -> ImportOutcome:
        """Import one source; never raises for a bad list, returns "failed" instead.

        `content` replaces the download for a source fed from inside the daemon.
        """
        self._running += 1
        try:
            return await self._import(source, content)
        finally:
            self._running -= 1
            self._quiet_until = self._clock() + 5.0

    async def _import(self, source: SourceRow, content: Sequence[bytes] | None) -> ImportOutcome:
        now = int(self._clock())
        jail = self._config().jail
        log_ = log.bind(source_id=source.id, source=source.name)
        try:
            if jail not in await self._client.jails():
                raise InvalidArgument(f"the blocklist jail {jail!r} is not configured in fail2ban")
            if content is None:
                result = await self._download(source.url, source)
            else:
                chunks = tuple(content)
                size = sum(len(c) for c in chunks)
                result = FetchResult(False, chunks, size, None, None, source.url)
            raw_hash = _raw_hash(result.chunks)
            if result.not_modified or raw_hash == await get_state(
                self._archive, _raw_key(source.id)
            ):
                # The same bytes as the listing in force: nothing to parse or ban.
                await self.sources.record_outcome(
                    source.id,
                    now,
                    UNCHANGED,
                    0,
                    etag=result.etag,
                    last_modified=result.last_modified,
                )
                log_.info("blocklist_import_unchanged", not_modified=result.not_modified)
                current = await self._current(source.id)
                current.reapplied = await self._reapply(source.id, jail)
                return current
            fetched = time.monotonic()
            parsed = await self._parse(result.chunks, *self._cap(source))
            allowed, refused = (await self._safety.policy(jail)).partition(parsed.entries)
            checked = time.monotonic()
        except (BanguiError, FetchError) as exc:
            await self.sources.record_outcome(source.id, now, FAILED, 0, error=str(exc))
            log_.warning("blocklist_import_failed", stage="download", error=str(exc))
            return ImportOutcome(FAILED, error=str(exc))

        outcome = ImportOutcome(
            COMPLETED,
            content_hash=parsed.content_hash,
            entries=len(parsed.entries),
            invalid=parsed.invalid,
            refused=len(refused),
        )
        claim = await self.runs.claim(source.id, parsed.content_hash, now)
        outcome.run_id = claim.run_id
        listed_hash = await get_state(self._archive, _listed_key(source.id))
        if claim.already_completed and listed_hash != parsed.content_hash:
            # Content seen before, but not what the source lists now (v1 -> v2 -> v1):
            # take that run up again and apply the difference.
            await self.runs.reopen(claim.run_id, now)
        elif claim.already_completed:
            outcome.status = UNCHANGED
            await self.sources.record_outcome(
                source.id, now, UNCHANGED, 0, etag=result.etag, last_modified=result.last_modified
            )
            log_.info("blocklist_import_unchanged", run_id=claim.run_id)
            outcome.reapplied = await self._reapply(source.id, jail)
            return outcome

        self._hub.publish(ImportStarted(source.id, claim.run_id))
        log_.info("blocklist_import_started", run_id=claim.run_id, entries=len(allowed))
        try:
            async with self._apply_lock:
                await self._apply(source.id, claim.run_id, jail, set(allowed), outcome, raw_hash)
        except BanguiError as exc:
            outcome.status, outcome.error = FAILED, str(exc)
            await self.runs.fail(claim.run_id, str(exc), int(self._clock()), _counts(outcome))
            await self.sources.record_outcome(
                source.id, int(self._clock()), FAILED, outcome.added, error=str(exc)
            )
            log_.warning(
                "blocklist_import_failed", stage="apply", run_id=claim.run_id, error=str(exc)
            )
        else:
            await self.sources.record_outcome(
                source.id,
                int(self._clock()),
                COMPLETED,
                outcome.added,
                etag=result.etag,
                last_modified=result.last_modified,
            )
            log_.info(
                "blocklist_import_completed",
                **_counts(outcome),
                run_id=claim.run_id,
                parse_seconds=round(checked - fetched, 3),
                apply_seconds=round(time.monotonic() - checked, 3),
            )
        self._hub.publish(ImportFinished(source.id, outcome.status, outcome.added, outcome.removed))
        return outcome

    async def _reapply(self, source_id: int, jail: str) -> int:
        """Ban again what this source lists and fail2ban no longer bans.

        fail2ban lifts a ban when its bantime ends, when an admin unbans by hand, or
        when it restarts without it; an unchanged list must still be enforced. The
        never-ban policy is applied again, so an address an admin allow-listed after
        unbanning it stays unbanned. Intents are written before each banip, as in an
        import, so a crash here bans nothing twice.
        """
        async with self._apply_lock:
            listed = await self.listings.entries(source_id)
            if not listed:
                return 0
            banned_now = set(await self._client.banned(jail))
            missing = sorted(listed - banned_now)
            if not missing:
                return 0
            lifted, _refused = (await self._safety.policy(jail)).partition(missing)
            listed_hash = await get_state(self._archive, _listed_key(source_id))
            run = None if listed_hash is None else await self.runs.find(source_id, listed_hash)
            run_id = run.id if run is not None else 0
            batch = self._config().batch_size
            call_timeout = self._f2b_timeout() + batch * SECONDS_PER_ENTRY
            now = int(self._clock())
            reapplied = 0
            for start in range(0, len(lifted), batch):
                chunk = lifted[start : start + batch]
                await self.listings.advance(source_id, [], chunk, jail, run_id, now)
                reapplied += await self._client.ban(jail, chunk, timeout=call_timeout)
                await self.listings.mark_banned(chunk)
        if reapplied:
            log.info("blocklist_bans_reapplied", source_id=source_id, reapplied=reapplied)
            self._hub.publish(ImportFinished(source_id, UNCHANGED, reapplied, 0))
        return reapplied

    async def _current(self, source_id: int) -> ImportOutcome:
        """ "unchanged", described by the completed run whose listing is in force."""
        listed = await get_state(self._archive, _listed_key(source_id))
        run = None if listed is None else await self.runs.find(source_id, listed)
        if run is None:
            return ImportOutcome(UNCHANGED)
        return ImportOutcome(
            UNCHANGED,
            run_id=run.id,
            content_hash=run.content_hash,
            entries=run.entries,
            invalid=run.invalid,
            refused=run.refused,
        )

    async def _apply(
        self,
        source_id: int,
        run_id: int,
        jail: str,
        wanted: set[str],
        outcome: ImportOutcome,
        raw_hash: str,
    ) -> None:
        previous = await self.listings.entries(source_id)
        ours = await self.listings.import_bans()
        banned_now = set(await self._client.banned(jail))
        # Banned by an earlier, interrupted attempt of ours: claim them, do not resend.
        recovered = sorted(e for e in wanted if ours.get(e) == "pending" and e in banned_now)
        if recovered:
            await self.listings.mark_banned(recovered)
        to_ban = sorted(wanted - banned_now)
        dropped = previous - wanted
        kept_by_others = await self.listings.listed_elsewhere(source_id, dropped)
        to_unban = sorted(
            e
            for e in dropped - kept_by_others
            if ours.get(e) == "banned" or (ours.get(e) == "pending" and e in banned_now)
        )
        progress = _Progress(self._hub, source_id, len(to_ban) + len(to_unban), self._clock)
        batch = self._config().batch_size
        call_timeout = self._f2b_timeout() + batch * SECONDS_PER_ENTRY
        now = int(self._clock())
        chunks = [to_ban[i : i + batch] for i in range(0, len(to_ban), batch)]
        if chunks:
            await self.listings.advance(source_id, [], chunks[0], jail, run_id, now)
        for index, chunk in enumerate(chunks):
            # The intent for `chunk` is durable here. While fail2ban bans it, record the
            # previous chunk as banned and the next one's intent: the archive's work
            # hides behind fail2ban's, and no banip is ever sent before its intent.
            banning = asyncio.ensure_future(self._client.ban(jail, chunk, timeout=call_timeout))
            nxt = chunks[index + 1] if index + 1 < len(chunks) else []
            done = chunks[index - 1] if index else []
            booking = asyncio.ensure_future(
                self.listings.advance(source_id, done, nxt, jail, run_id, now)
            )
            results = await asyncio.gather(banning, booking, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            outcome.added += int(str(results[0]))
            progress.advance(len(chunk))
        if chunks:
            await self.listings.advance(source_id, chunks[-1], [], jail, run_id, now)
        # Entries already forgotten by an interrupted attempt are not in `ours`; the
        # unban below is idempotent for the rest.
        rows = _RowsWritten(self._f2b_db, self._f2b_timeout(), jail, banned_now)
        for start in range(0, len(to_unban), batch):
            chunk = to_unban[start : start + batch]
            await rows.wait(chunk)
            outcome.removed += await self._client.unban(jail, chunk, timeout=call_timeout)
            await self.listings.forget_bans(chunk)
            progress.advance(len(chunk))
        progress.finish()
        async with self._archive.write() as conn:
            # what was banned above is listed already (see ListingsRepository.advance)
            rest = wanted - previous - set(to_ban)
            await replace_listing(conn, source_id, sorted(rest), sorted(previous - wanted))
            await complete_run(conn, run_id, int(self._clock()), _counts(outcome))
            await put_state(conn, _listed_key(source_id), outcome.content_hash)
            await put_state(conn, _raw_key(source_id), raw_hash)

    async def remove_source(self, source: SourceRow) -> int:
        """Unban what only this source listed (and an import banned), then delete it."""
        async with self._apply_lock:
            return await self._remove_source(source)

    async def _remove_source(self, source: SourceRow) -> int:
        jail = self._config().jail
        listed = await self.listings.entries(source.id)
        ours = await self.listings.import_bans()
        kept = await self.listings.listed_elsewhere(source.id, listed)
        to_unban = sorted(e for e in listed - kept if e in ours)
        removed = 0
        batch = self._config().batch_size
        banned_now = set(await self._client.banned(jail)) if to_unban else set()
        rows = _RowsWritten(self._f2b_db, self._f2b_timeout(), jail, banned_now)
        for start in range(0, len(to_unban), batch):
            await rows.wait(to_unban[start : start + batch])
            removed += await self._client.unban(
                jail,
                to_unban[start : start + batch],
                timeout=self._f2b_timeout() + batch * SECONDS_PER_ENTRY,
            )
        await self.listings.remove_source(source.id, to_unban)
        log.info("blocklist_source_removed", source_id=source.id, unbanned=removed)
        return removed


class _RowsWritten:
    """Before an unban: fail2ban's DB has the rows of the bans it lifts (see ban_rows).

    One wait that runs out ends the waiting for the rest of the run: the DB is then
    elsewhere or stuck, and every further batch would wait the same in vain.
    """

    def __init__(
        self, db: Callable[[], str] | None, timeout: float, jail: str, banned_now: set[str]
    ) -> None:
        self._db, self._timeout, self._jail, self._banned_now = db, timeout, jail, banned_now

    async def wait(self, chunk: Sequence[str]) -> None:
        if self._db is None:
            return
        live = [e for e in chunk if e in self._banned_now]
        if not await await_ban_rows(self._db(), self._jail, live, self._timeout):
            self._db = None


class _Progress:
    """ImportProgress signals, throttled to about 4 a second."""

    def __init__(self, hub: EventHub, source_id: int, total: int, clock: Callable[[], float]):
        self._hub, self._source_id, self._total, self._clock = hub, source_id, total, clock
        self._done = 0
        self._last = 0.0

    def advance(self, n: int) -> None:
        self._done += n
        now = self._clock()
        if now - self._last >= PROGRESS_EVERY:
            self._last = now
            self._hub.publish(ImportProgress(self._source_id, self._done, self._total))

    def finish(self) -> None:
        self._hub.publish(ImportProgress(self._source_id, self._done, self._total))


def _raw_hash(chunks: Sequence[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _raw_key(source_id: int) -> str:
    """daemon_state key of the hash of the downloaded bytes behind the listing."""
    return f"blocklist.raw_hash.{source_id}"


def _listed_key(source_id: int) -> str:
    """daemon_state key of the content hash a source's stored listing came from."""
    return f"blocklist.listed_hash.{source_id}"


def _counts(o: ImportOutcome) -> dict[str, int]:
    return {
        "entries": o.entries,
        "added": o.added,
        "removed": o.removed,
        "invalid": o.invalid,
        "refused": o.refused,
    }
