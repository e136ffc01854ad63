/*
 * madvise-keeper: anonymous regions, each with one madvise(2) advice that shows in VmFlags, and
 * no shared mapping at all, so that a dump reads its memory map from /proc/PID/maps and takes
 * the VmFlags from smaps later (see vmFlagsCanWait in packages/core/src/dump/memory.ts).
 *
 *   madvise-keeper REPORT_FILE DIR
 *
 * Maps a region of 4 pages per advice, writes a page of each, then appends one line per region,
 * "region <advice name> <hex address>" (a region whose advice this kernel refuses is left out),
 * then "ready <pid>", and sleeps in pause() until a signal ends it.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  FILE *report = fopen(argv[1], "a");
  if (!report) return 2;
  static const struct { const char *name; int advice; } advices[] = {
    { "dontfork", MADV_DONTFORK }, { "dontdump", MADV_DONTDUMP }, { "wipeonfork", MADV_WIPEONFORK },
    { "hugepage", MADV_HUGEPAGE }, { "nohugepage", MADV_NOHUGEPAGE }, { "random", MADV_RANDOM },
    { "sequential", MADV_SEQUENTIAL },
  };
  for (size_t i = 0; i < sizeof(advices) / sizeof(advices[0]); i++) {
    char *region = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) {
      fprintf(report, "setup failed mmap\n");
      return 1;
    }
    memset(region, (int)i + 1, PAGE);
    if (madvise(region, 4 * PAGE, advices[i].advice) != 0) continue;
    fprintf(report, "region %s %lx\n", advices[i].name, (unsigned long)region);
  }
  fprintf(report, "ready %d\n", getpid());
  fclose(report);
  for (;;) pause();
}
