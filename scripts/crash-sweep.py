#!/usr/bin/env python3
"""The workload and the check of scripts/crash-sweep.sh.

  crash-sweep.py work MOUNT LOG SEED   run until killed
  crash-sweep.py check MOUNT LOG       exit 1 if a closed file is gone

`work` writes files into four directories and four subdirectories of
them, and at random overwrites a file, swaps two files between
directories (a cycle of renames), moves a subdirectory to another parent,
renames a file over one in another directory, gives a file another name
(a hard link), or removes a name. After each close it appends the file's
id and the SHA-256 of what it holds to LOG (line-buffered), so LOG names
only what was closed before the kill; a file whose last name went is
logged as removed (before the operation), and a rewrite as it starts
(`writing`): one in flight at the kill is not looked for. Each rename, link and unlink is logged (`op ...`) as
it starts, for tracing a lost file. The choice of operations follows SEED; the weights
come from P_OVER, P_SWAP, P_DIR, P_OVERWRITE_NAME, P_LINK (the rest: new
files, and removals past those).

`check` walks MOUNT and looks for the last closed content of every file
not removed, at any path: a crash may undo a rename that was not yet
durable, or leave a file under two names, but must not lose it.
"""
import hashlib
import os
import random
import sys


def work(mnt, log, seed):
    rnd = random.Random(seed)
    p_over = float(os.environ.get("P_OVER", 0.1))
    p_swap = float(os.environ.get("P_SWAP", 0.2))
    p_dir = float(os.environ.get("P_DIR", 0.07))
    p_over_name = float(os.environ.get("P_OVERWRITE_NAME", 0.05))
    p_link = float(os.environ.get("P_LINK", 0.03))
    tops = [os.path.join(mnt, f"d{i}") for i in range(4)]
    for d in tops:
        os.makedirs(d, exist_ok=True)
    subs = {}
    for j in range(4):
        subs[j] = os.path.join(rnd.choice(tops), f"s{j}")
        os.makedirs(subs[j], exist_ok=True)
    out = open(log, "a", buffering=1)
    # Each file's names; `where` holds one of them (the one written to).
    where, version, names = {}, {}, {}

    def write(idx, path):
        version[idx] = version.get(idx, 0) + 1
        line = f"id={idx} v={version[idx]} seed={seed}\n"
        body = (line * rnd.randint(1, 3000)).encode()
        # A rewrite in flight at the kill may have emptied the file (its
        # O_TRUNC took effect): `check` does not look for it.
        out.write(f"writing {idx}\n")
        with open(path, "wb") as f:
            f.write(body)
        out.write(f"closed {idx} {hashlib.sha256(body).hexdigest()}\n")

    def drop_name(k, path):
        names[k].discard(path)
        if not names[k]:
            del names[k], where[k]
            out.write(f"removed {k}\n")
        elif where[k] == path:
            where[k] = sorted(names[k])[0]

    i = 0
    while True:
        i += 1
        r = rnd.random()
        if r < 0.5 or len(where) < 4:
            path = os.path.join(rnd.choice(tops + list(subs.values())), f"f{i}")
            write(i, path)
            where[i] = path
            names[i] = {path}
            out.write(f"op new {i} {path}\n")
        elif r < 0.5 + p_over:
            a = rnd.choice(sorted(where))
            write(a, where[a])
        elif r < 0.5 + p_over + p_swap:
            a, b = rnd.sample(sorted(where), 2)
            da, db = os.path.dirname(where[a]), os.path.dirname(where[b])
            if da == db:
                continue
            aside = where[a] + ".swap"
            out.write(f"op swap {a} {where[a]} {b} {where[b]}\n")
            os.rename(where[a], aside)
            os.rename(where[b], os.path.join(da, os.path.basename(where[b])))
            os.rename(aside, os.path.join(db, os.path.basename(where[a])))
            for k, d in ((a, db), (b, da)):
                names[k].discard(where[k])
                where[k] = os.path.join(d, os.path.basename(where[k]))
                names[k].add(where[k])
        elif r < 0.5 + p_over + p_swap + p_dir:
            j = rnd.choice(sorted(subs))
            src, dst = subs[j], os.path.join(rnd.choice(tops), f"s{j}")
            if src == dst:
                continue
            out.write(f"op move-dir {src} {dst}\n")
            os.rename(src, dst)
            subs[j] = dst
            moved = lambda p: dst + p[len(src):] if p.startswith(src + "/") else p
            for k in where:
                where[k] = moved(where[k])
                names[k] = {moved(p) for p in names[k]}
        elif r < 0.5 + p_over + p_swap + p_dir + p_over_name:
            # a's name goes over one of b's in another directory.
            a, b = rnd.sample(sorted(where), 2)
            pb = rnd.choice(sorted(names[b]))
            if os.path.dirname(where[a]) == os.path.dirname(pb):
                continue
            out.write(f"op over {a} {where[a]} {b} {pb}\n")
            # b's removal is logged first: a rename in flight at the kill
            # may have been done with its answer lost.
            drop_name(b, pb)
            os.rename(where[a], pb)
            names[a].discard(where[a])
            names[a].add(pb)
            where[a] = pb
        elif r < 0.5 + p_over + p_swap + p_dir + p_over_name + p_link:
            a = rnd.choice(sorted(where))
            path = os.path.join(rnd.choice(tops + list(subs.values())), f"h{i}")
            out.write(f"op link {a} {where[a]} {path}\n")
            os.link(where[a], path)
            names[a].add(path)
        else:
            a = rnd.choice(sorted(where))
            path = rnd.choice(sorted(names[a]))
            out.write(f"op unlink {a} {path}\n")
            drop_name(a, path)
            os.unlink(path)


def check(mnt, log):
    latest, removed, writing = {}, set(), set()
    for line in open(log):
        parts = line.split()
        if len(parts) == 3 and parts[0] == "closed":
            latest[int(parts[1])] = parts[2]
            writing.discard(int(parts[1]))
        elif len(parts) == 2 and parts[0] == "removed":
            removed.add(int(parts[1]))
        elif len(parts) == 2 and parts[0] == "writing":
            writing.add(int(parts[1]))
    removed |= writing
    held = {}
    for root, dirs, files in os.walk(mnt):
        if root == mnt and "friends" in dirs:
            dirs.remove("friends")
        for name in files:
            path = os.path.join(root, name)
            # The mount lets go of a second name of a file once it is named
            # where it went on every mirror, perhaps while this walks.
            try:
                with open(path, "rb") as f:
                    body = f.read()
            except FileNotFoundError:
                continue
            held.setdefault(hashlib.sha256(body).hexdigest(), []).append(path)
    missing = sorted(k for k, h in latest.items() if k not in removed and h not in held)
    twice = sum(1 for paths in held.values() if len(paths) > 1)
    kept = len(set(latest) - removed)
    print(f"files {kept}, lost {len(missing)} {missing[:20]}, under two names {twice}")
    return 1 if missing else 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "work":
        work(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
