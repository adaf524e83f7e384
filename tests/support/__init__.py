"""What the tests share, by job (fixtures stay in tests/conftest.py):

    tools.py      external tools CI installs (fail under CI=true, skip locally)
    polling.py    wait_for: poll with a deadline, never sleep
    clocks.py     FakeClock (moves when told), ShiftedClock (real time plus an offset)
    ports.py      a free loopback port
    samples.py    /metrics text parsed into samples
    exporters.py  the test API key, configs, an exporter served on loopback
    processes.py  copyai-exporter in a subprocess, its stderr collected
    redis.py      a redis-server of the test's own
    pki.py        a throwaway CA and certificates for TLS tests
    browser.py    headless Chromium: a page's DOM after load, and its CSP violations
    api_examples.py  the public API documentation's example bodies (tests/fixtures/api)

No test module imports another test module: what two of them need is here.
"""
