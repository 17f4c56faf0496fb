#!/usr/bin/env python3
# Removes each rule of the feed protocol from veto-feed in turn and runs
# its unit tests: every mutation must be killed (some test fails). The
# source is restored after each run. Usage: scripts/feed-mutations.py
import subprocess, sys
W='crates/feed/src/session/writer.rs'; D='crates/feed/src/session/edge.rs'; R='crates/feed/src/replica.rs'
muts=[
("W1 reply only once the read index is sent",W,"            if index > self.cursor {\n                break;","            if false {\n                break;"),
("W2 replies keep probe order",W,"            .push_back((nonce, read_index, leader_unix_ms));","            .push_front((nonce, read_index, leader_unix_ms));"),
("W3 a new edge starts with a snapshot",W,"        if hello_revision == 0 {\n            Start::Snapshot","        if false {\n            Start::Snapshot"),
("W4 cursor behind the log gets a snapshot",W,"            Read::Snapshot => Next::Snapshot,","            Read::Snapshot => Next::Idle,"),
("W5 edge ahead of the cluster is replaced",W,"        if hello_revision > cluster_commit {","        if false {"),
("W6 a forced snapshot comes first",W,"        if self.force_snapshot && log.head() > 0 {","        if false {"),
("E1 switch-over when no answer within B",D,"        if now.saturating_duration_since(since) > self.bound {","        if false {"),
("E2 freshness only from an accepted reply",D,"                if replica.sync_reply(nonce, revision) {","                if { replica.sync_reply(nonce, revision); true } {"),
("E3 snapshot chunks in order",D,"        if offset != self.snap.len() as u64 {","        if false {"),
("E4 snapshot under its checksum",D,"        if sha2::Sha256::digest(&whole).as_slice() != sha256 {","        if false {"),
("E5 snapshot size limit",D,"> self.max_snapshot_bytes {","> usize::MAX {"),
("E6 ack pacing",D,"            Some(t) if now.saturating_duration_since(t) < ACK_INTERVAL => {","            Some(t) if false => {"),
("E7 newest pending ack wins",D,"                self.pending_ack = Some((rev, now));","                if first { self.pending_ack = Some((rev, now)); }"),
("E8 Hello from 0 when resyncing",D,"        if resync {\n            0","        if false {\n            0"),
("R1 batch must start at the replica's revision",R,"        if b.from != self.revision {","        if false {"),
("R2 probe answer counts only once its revision is applied",R,"        if revision <= self.revision {\n            self.mark_fresh(sent);","        if true {\n            self.mark_fresh(sent);"),
]
for name,f,old,new in muts:
    s=open(f).read()
    if s.count(old)!=1:
        print(name,"PATTERN NOT UNIQUE/FOUND",s.count(old)); continue
    open(f,'w').write(s.replace(old,new))
    try:
        r=subprocess.run(["cargo","test","-q","-p","veto-feed","--lib"],capture_output=True,text=True,timeout=600)
        out=r.stdout+r.stderr
        failed=[l.split()[1] for l in out.splitlines() if l.startswith("---- ") and l.endswith(" stdout ----")]
        if r.returncode==0: print(name,"-> SURVIVED (no test failed)")
        elif failed: print(name,"-> killed by",", ".join(x.split("::")[-1] for x in failed))
        else: print(name,"-> build failed:", [l for l in out.splitlines() if l.startswith("error")][:2])
    finally:
        open(f,'w').write(s)
    sys.stdout.flush()
