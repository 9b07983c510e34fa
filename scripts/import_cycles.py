#!/usr/bin/env python3
"""Fails when a module of a crate imports (through `crate::` or `super::` paths, directly
or through other modules) a module that imports it back. Usage:
scripts/import_cycles.py SRC_DIR... (each a crate's src directory). Test modules
(`#[cfg(test)]` onwards) and comments are ignored."""
import re,os,sys
def files(src):
    g={}
    for root,_,fs in os.walk(src):
        for f in fs:
            if not f.endswith('.rs'): continue
            p=os.path.join(root,f)
            rel=os.path.relpath(p,src)[:-3].replace('/mod','')
            if rel in('lib','main'): continue
            txt=open(p).read()
            i=txt.find('#[cfg(test)]')
            if i>=0: txt=txt[:i]
            txt='\n'.join(l for l in txt.split('\n') if not l.strip().startswith('//'))
            deps=set()
            for m in re.findall(r'crate::(\w+(?:::\w+)*)',txt):
                parts=m.split('::')
                # resolve to the deepest existing file
                for k in range(len(parts),0,-1):
                    cand='/'.join(parts[:k])
                    if os.path.exists(os.path.join(src,cand+'.rs')) or os.path.exists(os.path.join(src,cand,'mod.rs')):
                        deps.add(cand); break
            for m in re.findall(r'\bsuper::(\w+)',txt):
                parent=os.path.dirname(rel)
                deps.add(parent if not os.path.exists(os.path.join(src,parent,m+'.rs')) else parent+'/'+m)
            g[rel]={d for d in deps if d!=rel}
    return g
def cycles(g):
    out=set()
    def dfs(n,stack):
        for d in g.get(n,()):
            if d in stack: out.add(tuple(sorted(stack[stack.index(d):]))); continue
            if len(stack)<12: dfs(d,stack+[d])
    for n in g: dfs(n,[n])
    return out
bad = False
for c in sys.argv[1:]:
    found = sorted(cycles(files(c)))
    for cyc in found:
        print(f"{c}: import cycle among {', '.join(cyc)}")
    bad = bad or bool(found)
if bad:
    sys.exit(1)
print(f"no import cycles in {len(sys.argv) - 1} crates")
