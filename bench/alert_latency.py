#!/usr/bin/env python3
# Alert latency through the real supervisor (docs/observability.md, Figures): `unwedge run`
# with N `unwedge demo-service` workers, --report-dir (fsync before each alert) and
# --alert-webhook pointing at a receiver in this script; SIGKILL each worker in turn and time
# until the receiver has its worker_crashed alert. NOREPORT=1 leaves out --report-dir.
#
#   cargo build --release -p unwedge-cli
#   python3 bench/alert_latency.py target/release/unwedge 16
import http.server, json, os, re, signal, subprocess, sys, tempfile, threading, time
B, N = sys.argv[1], int(sys.argv[2])
got = {}
cv = threading.Condition()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        b = self.rfile.read(int(self.headers["Content-Length"]))
        t = time.monotonic()
        ev = json.loads(b)["event"]
        with cv:
            got[ev["pid"]] = t; cv.notify_all()
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
d = tempfile.mkdtemp()
p = subprocess.Popen([B, "run", "--listen", "127.0.0.1:0", "--workers", str(N), "--admin", "off", *([] if os.environ.get("NOREPORT") else ["--report-dir", d]),
    "--alert-webhook", f"http://127.0.0.1:{srv.server_port}/hook", "--", B, "demo-service"],
    stderr=subprocess.PIPE, text=True)
ready = []
def lines():
    for l in p.stderr:
        m = re.search(r"(w\d+) pid (\d+) ready in", l)
        if m:
            with cv: ready.append(int(m.group(2))); cv.notify_all()
threading.Thread(target=lines, daemon=True).start()
with cv: cv.wait_for(lambda: len(ready) >= N, 20)
lat = []
for pid in list(ready[:N]):
    t0 = time.monotonic(); os.kill(pid, signal.SIGKILL)
    with cv: cv.wait_for(lambda: pid in got, 20)
    lat.append((got[pid] - t0) * 1000)
    with cv: cv.wait_for(lambda: len(ready) >= N + len(lat), 20)
p.send_signal(signal.SIGTERM); p.wait(30)
lat.sort()
print("n=%d ms: min %.1f median %.1f max %.1f  %s" % (len(lat), lat[0], lat[len(lat)//2], lat[-1], [round(x,1) for x in lat]))
