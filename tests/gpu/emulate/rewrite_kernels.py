#!/usr/bin/env python3
"""Rewrites kernels/cuda/*.cu into plain C++ for the CPU emulator (see README.md).

Usage: rewrite_kernels.py KERNELS_CUDA_DIR OUTPUT_DIR

Two textual changes, nothing else: every launch `kernel<<<grid, block, shared,
stream>>>(args);` becomes `emu_launch(grid, block, shared, [&] { kernel(args); });`
and `extern __shared__ float shared[];` becomes a pointer to the emulator's
dynamic shared memory. The script fails if a launch does not have the
four-part configuration it expects, so a new launch style is noticed.
"""
import glob
import os
import re
import sys

LAUNCH = re.compile(r'([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\((.*?)\);', re.S)


def split_top_level(text):
    parts, depth, current = [], 0, ''
    for ch in text:
        if ch in '([<':
            depth += 1
        elif ch in ')]>':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(current.strip())
            current = ''
        else:
            current += ch
    parts.append(current.strip())
    return parts


def rewrite_launch(match):
    config = split_top_level(match.group(2))
    if len(config) != 4:
        raise SystemExit('launch without <<<grid, block, shared, stream>>>: ' + match.group(0)[:120])
    return 'emu_launch(%s, %s, %s, [&] { %s(%s); });' % (config[0], config[1], config[2], match.group(1),
                                                          match.group(3))


def main():
    source_dir, output_dir = sys.argv[1], sys.argv[2]
    os.makedirs(output_dir, exist_ok=True)
    launches = 0
    for path in sorted(glob.glob(os.path.join(source_dir, '*.cu'))):
        text = open(path).read()
        text = text.replace('extern __shared__ float shared[];', 'float* shared = g_dynamic_shared;')
        text, count = LAUNCH.subn(rewrite_launch, text)
        launches += count
        name = os.path.basename(path)[:-3] + '.cc'
        open(os.path.join(output_dir, name), 'w').write(text)
    if '<<<' in ''.join(open(p).read() for p in glob.glob(os.path.join(output_dir, '*.cc'))):
        raise SystemExit('a launch was not rewritten')
    print('rewrote %d launches' % launches)


if __name__ == '__main__':
    main()
