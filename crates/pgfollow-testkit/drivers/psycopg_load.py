"""psycopg 3 load for pgfollow's tests, as an app would run it.

Usage: python psycopg_load.py CONNINFO CLIENTS FIRST_CLIENT SECONDS TABLE

CLIENTS threads, each with its own connection made with prepare_threshold=0
(so every statement is a named, protocol-level prepared statement from its
first execution), run transactions for SECONDS: odd ones a single INSERT
... RETURNING in autocommit, even ones an explicit transaction with an INSERT
and a SELECT. Thread i writes rows (FIRST_CLIENT + i, n). The password comes
from the environment (PGPASSWORD) when CONNINFO has none. Prints one JSON
object on stdout: transactions, errors, first_errors, acked ([client, n]
of every acknowledged INSERT).
"""

import json
import sys
import threading
import time

import psycopg
from psycopg import sql

MAX_KEPT_ERRORS = 10


def main():
    conninfo = sys.argv[1]
    clients = int(sys.argv[2])
    first = int(sys.argv[3])
    seconds = float(sys.argv[4])
    table = sql.Identifier(sys.argv[5])
    insert = sql.SQL("INSERT INTO {} (client, n) VALUES (%s, %s) RETURNING n").format(table)
    count = sql.SQL("SELECT count(*) FROM {} WHERE client = %s").format(table)
    lock = threading.Lock()
    report = {"clients": clients, "transactions": 0, "errors": 0, "first_errors": [], "acked": []}
    deadline = time.monotonic() + seconds

    def run(client):
        conn = None
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(
                        conninfo, autocommit=True, prepare_threshold=0, connect_timeout=10
                    )
                if n % 2:
                    got = conn.execute(insert, (client, n)).fetchone()[0]
                else:
                    with conn.transaction():
                        got = conn.execute(insert, (client, n)).fetchone()[0]
                        conn.execute(count, (client,)).fetchone()
                if got != n:
                    raise RuntimeError(f"INSERT returned {got}, expected {n}")
                with lock:
                    report["transactions"] += 1
                    report["acked"].append([client, n])
            except Exception as e:  # every failure is counted and reported
                with lock:
                    report["errors"] += 1
                    if len(report["first_errors"]) < MAX_KEPT_ERRORS:
                        report["first_errors"].append(f"client {client} tx {n}: {e}".strip())
                if conn is not None and conn.broken:
                    conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=run, args=(first + i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
