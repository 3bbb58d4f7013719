"""PROPFIND multistatus parsing with answers as nginx dav-ext and Apache mod_dav write them."""

from __future__ import annotations

import datetime

import pytest

from kei_gateway.adapters.transport import parse_multistatus
from kei_gateway.adapters.transport._dav import MultistatusError, file_url

NGINX_DAV_EXT = b"""<?xml version="1.0" encoding="utf-8" ?>
<D:multistatus xmlns:D="DAV:">
<D:response>
<D:href>/results/</D:href>
<D:propstat>
<D:prop>
<D:getlastmodified>Tue, 01 Apr 2025 00:00:00 GMT</D:getlastmodified>
<D:resourcetype><D:collection/></D:resourcetype>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
</D:response>
<D:response>
<D:href>/results/131041_jnks-receipts_20250401090000_1.dat</D:href>
<D:propstat>
<D:prop>
<D:getcontentlength>200</D:getcontentlength>
<D:getlastmodified>Tue, 01 Apr 2025 00:01:02 GMT</D:getlastmodified>
<D:resourcetype></D:resourcetype>
<D:getetag>"67eb2c0e-c8"</D:getetag>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
</D:response>
<D:response>
<D:href>/results/old/</D:href>
<D:propstat>
<D:prop>
<D:resourcetype><D:collection/></D:resourcetype>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
</D:response>
<D:response>
<D:href>/results/%E7%B5%90%E6%9E%9C.dat</D:href>
<D:propstat>
<D:prop>
<D:getcontentlength>0</D:getcontentlength>
<D:resourcetype></D:resourcetype>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
</D:response>
</D:multistatus>
"""

APACHE = b"""<?xml version="1.0" encoding="utf-8"?>
<D:multistatus xmlns:D="DAV:" xmlns:ns0="DAV:">
<D:response xmlns:lp1="DAV:" xmlns:lp2="http://apache.org/dav/props/">
<D:href>https://mpn.example.lg.jp/results/</D:href>
<D:propstat>
<D:prop>
<lp1:resourcetype><D:collection/></lp1:resourcetype>
<lp1:getlastmodified>Tue, 01 Apr 2025 00:00:00 GMT</lp1:getlastmodified>
<lp1:getetag>"1000-5f0"</lp1:getetag>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
<D:propstat>
<D:prop>
<D:getcontentlength/>
</D:prop>
<D:status>HTTP/1.1 404 Not Found</D:status>
</D:propstat>
</D:response>
<D:response xmlns:lp1="DAV:" xmlns:lp2="http://apache.org/dav/props/">
<D:href>/results/131041_mpn-results_20250401090000_9.dat</D:href>
<D:propstat>
<D:prop>
<lp1:resourcetype/>
<lp1:getcontentlength>2580</lp1:getcontentlength>
<lp1:getlastmodified>Tue, 01 Apr 2025 00:05:00 GMT</lp1:getlastmodified>
<lp1:getetag>"a14-5f0b"</lp1:getetag>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
</D:response>
</D:multistatus>
"""


def test_when_nginx_dav_ext_answers_then_files_only_with_size_etag_and_time() -> None:
    entries = parse_multistatus(NGINX_DAV_EXT, "https://jnks.example.lg.jp/results/")
    assert [e.name for e in entries] == ["131041_jnks-receipts_20250401090000_1.dat", "結果.dat"]
    first = entries[0]
    assert (first.size, first.etag) == (200, '"67eb2c0e-c8"')
    assert first.last_modified == datetime.datetime(2025, 4, 1, 0, 1, 2, tzinfo=datetime.timezone.utc)
    assert (entries[1].size, entries[1].etag, entries[1].last_modified) == (0, None, None)


def test_when_apache_answers_with_absolute_hrefs_and_404_propstats_then_the_file_is_listed() -> None:
    entries = parse_multistatus(APACHE, "https://mpn.example.lg.jp/results/")
    assert [(e.name, e.size, e.etag) for e in entries] == [
        ("131041_mpn-results_20250401090000_9.dat", 2580, '"a14-5f0b"')]


def test_when_the_answer_is_not_a_multistatus_then_an_error() -> None:
    with pytest.raises(MultistatusError):
        parse_multistatus(b"<html>oops</html>", "https://a/b/")
    with pytest.raises(MultistatusError):
        parse_multistatus(b"not xml", "https://a/b/")


def test_when_an_entry_is_deeper_than_depth_1_then_it_is_ignored() -> None:
    body = NGINX_DAV_EXT.replace(b"/results/%E7%B5%90%E6%9E%9C.dat", b"/results/old/x.dat")
    assert [e.name for e in parse_multistatus(body, "https://jnks.example.lg.jp/results/")] == [
        "131041_jnks-receipts_20250401090000_1.dat"]


def test_file_url_refuses_paths() -> None:
    assert file_url("https://h/upload/", "a b.dat") == "https://h/upload/a%20b.dat"
    for bad in ("../x", "a/b", "", ".."):
        with pytest.raises(ValueError):
            file_url("https://h/upload/", bad)
