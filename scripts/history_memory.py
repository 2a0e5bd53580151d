# Memory per message held in history: 1,000 topics x 100 messages of 100-byte data, server RSS
# before and after, against what the history charges itself; and the second half's growth alone
# (the marginal cost, without the buffers the first requests allocate once). Loopback only,
# bounded.
# usage: python3 scripts/history_memory.py [path/to/wspush]
import socket, subprocess, re, json, time
import sys
B=sys.argv[1] if len(sys.argv) > 1 else "target/release/wspush"
p=subprocess.Popen([B,"--listen","127.0.0.1:0","--api-listen","127.0.0.1:0","--no-tick","--history-memory","64MiB"],stderr=subprocess.PIPE,text=True)
line=p.stderr.readline(); api=re.search(r"api: ([\d.:]+)\)",line).group(1); h,pt=api.rsplit(":",1)
def req(method,path,body=b"",ct="application/x-ndjson"):
    s=socket.create_connection((h,int(pt)))
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()+body)
    out=b""
    while True:
        c=s.recv(65536)
        if not c: break
        out+=c
    return out.split(b"\r\n\r\n",1)[1]
def rss(): return int(re.search(r"VmRSS:\s+(\d+)",open(f"/proc/{p.pid}/status").read()).group(1))
time.sleep(0.2)
r0=rss()
data='"'+"f"*98+'"'
half=None
for t in range(1000):
    if t == 500: time.sleep(0.3); half=rss()
    body="".join(json.dumps({"topic":f"user-{t:04d}","data":json.loads(data)})+"\n" for _ in range(100)).encode()
    req("POST","/publish",body)
time.sleep(0.3)
r1=rss(); st=json.loads(req("GET","/stats"))
one=json.loads(req("GET","/history?topic=user-0001&since=99"))
print(f"RSS {r0} -> {r1} KiB: {(r1-r0)*1024/st['history_messages']:.0f} B per held message; history_messages {st['history_messages']}, history_bytes {st['history_bytes']} ({st['history_bytes']/st['history_messages']:.0f} B each, accounted)")
print(f"second half: RSS {half} -> {r1} KiB: {(r1-half)*1024/(st['history_messages']/2):.1f} B per held message")
print("one message:", one["messages"][0] if one.get("messages") else one)
p.terminate(); p.wait()
