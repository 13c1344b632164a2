"""Verify probes a hash index on the digest. A hash index returns every row whose digest *hashes*
alike (32 bits), so two stored keys can share a bucket entry; each must still verify as itself,
whichever of the two the scan returns first. The pair below was found by searching SHA-256
digests of cfk keys for equal PostgreSQL hash values (hash_bytes, checked against hashtext)."""

import hashlib
import struct

from conftest import ROOT  # noqa: F401  (the shared cluster fixture lives there)

M = 0xFFFFFFFF


def _rot(x, k):
    return ((x << k) | (x >> (32 - k))) & M


def _mix(a, b, c):
    a = (a - c) & M; a ^= _rot(c, 4); c = (c + b) & M
    b = (b - a) & M; b ^= _rot(a, 6); a = (a + c) & M
    c = (c - b) & M; c ^= _rot(b, 8); b = (b + a) & M
    a = (a - c) & M; a ^= _rot(c, 16); c = (c + b) & M
    b = (b - a) & M; b ^= _rot(a, 19); a = (a + c) & M
    c = (c - b) & M; c ^= _rot(b, 4); b = (b + a) & M
    return a, b, c


def _final(a, b, c):
    c ^= b; c = (c - _rot(b, 14)) & M
    a ^= c; a = (a - _rot(c, 11)) & M
    b ^= a; b = (b - _rot(a, 25)) & M
    c ^= b; c = (c - _rot(b, 16)) & M
    a ^= c; a = (a - _rot(c, 4)) & M
    b ^= a; b = (b - _rot(a, 14)) & M
    c ^= b; c = (c - _rot(b, 24)) & M
    return c


def hash_bytes(k: bytes) -> int:
    """PostgreSQL's hash_bytes (Bob Jenkins' lookup3, little-endian), as hash indexes use it."""
    n = len(k)
    a = b = c = (0x9E3779B9 + n + 3923095) & M
    i = 0
    while n - i >= 12:
        x, y, z = struct.unpack_from("<III", k, i)
        a, b, c = _mix((a + x) & M, (b + y) & M, (c + z) & M)
        i += 12
    tail = k[i:]
    if len(tail) > 8:  # the lowest byte of c is reserved for the length
        c = (c + (int.from_bytes(tail[8:], "little") << 8)) & M
    if len(tail) > 4:
        b = (b + int.from_bytes(tail[4:8], "little")) & M
    if tail:
        a = (a + int.from_bytes(tail[:4], "little")) & M
    return _final(a, b, c)


def key(i):
    return "cfk_" + hashlib.sha256(b"pg_apikey collision search %d" % i).hexdigest()


PAIR = (key(14889), key(103387))


def digest(k):
    return hashlib.sha256(k.encode()).digest()


def test_the_python_hash_is_postgres_hash(db):
    with db() as c:
        for s in ["abcdefghijklmnopqrstuvwxyz012345", "a", "abcdefghijk", "y" * 25]:
            pg = c.execute("SELECT hashtext(%s)", (s,)).fetchone()[0] & M
            assert pg == hash_bytes(s.encode()), s
    assert hash_bytes(digest(PAIR[0])) == hash_bytes(digest(PAIR[1]))
    assert digest(PAIR[0]) != digest(PAIR[1])


def test_keys_whose_digests_hash_alike_both_verify_in_either_order(db):
    with db() as c:
        c.execute("SET apikey.key_cache_size = 0")  # every verify probes the index
        assert c.execute("""SELECT a.amname FROM pg_index i JOIN pg_class r ON r.oid = i.indexrelid
                            JOIN pg_am a ON a.oid = r.relam
                            WHERE i.indrelid = 'apikey.keys'::regclass AND r.relname = 'keys_digest_hash'"""
                         ).fetchone()[0] == "hash"
        for first, second in (PAIR, PAIR[::-1]):
            ids = {}
            for k in (first, second):
                ids[k] = c.execute("SELECT apikey.import('hash', 'alike', %s, 'sha256')",
                                   (digest(k).hex(),)).fetchone()[0]
            for k in (first, second, first):
                assert c.execute("SELECT id FROM apikey.verify(%s)", (k,)).fetchone()[0] == ids[k]
            c.execute("SELECT apikey.delete(id) FROM apikey.keys WHERE owner = 'hash'")
