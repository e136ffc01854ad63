/*
 * link-keeper: holds three files whose names are gone, for --link-remap, then checks after the
 * restore that each is the file it had (same inode where a link kept it), with its contents and
 * offset.
 *
 *   link-keeper REPORT_FILE WORK_DIR
 *
 * Protocol as tests/state-keeper.c ("ready <pid>", SIGUSR1 -> ok/FAIL lines, "done N").
 *   - an O_TMPFILE file in WORK_DIR (never had a name; linkable: opened without O_EXCL), offset 5
 *   - WORK_DIR/linked, hard-linked as WORK_DIR/other-link, then unlinked (nlink 1), offset 3,
 *     also mapped MAP_SHARED: after the restore, a write through the fd must show through
 *     WORK_DIR/other-link and in the mapping, a write to the mapping through the other link
 *   - WORK_DIR/gone, unlinked with no other link (nlink 0: the kernel refuses it a link, so the
 *     dump keeps a copy, a ghost file), offset 2
 * Inode numbers are remembered in memory (restored with it) and compared after the restore.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keeper.h"

static const char TMP_DATA[] = "tmpfile contents";
static const char LINKED_DATA[] = "shared through two names";
static const char GONE_DATA[] = "a copy is all that is left";

static int contents_are(int fd, const char *want)
{
	char got[128] = { 0 };
	ssize_t n = pread(fd, got, sizeof(got) - 1, 0);
	return n == (ssize_t)strlen(want) && memcmp(got, want, (size_t)n) == 0;
}

static int deleted_link(int fd)
{
	char path[64], link[4300];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	if (n <= 0)
		return 0;
	link[n] = '\0';
	return strstr(link, " (deleted)") != NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	if (keeper_open_report(argv[1]) < 0)
		return 3;
	const char *dir = argv[2];
	char linked_path[4200], other_path[4200], gone_path[4200];
	snprintf(linked_path, sizeof(linked_path), "%s/linked", dir);
	snprintf(other_path, sizeof(other_path), "%s/other-link", dir);
	snprintf(gone_path, sizeof(gone_path), "%s/gone", dir);

	int tmp = open(dir, O_TMPFILE | O_RDWR, 0600);
	MUST(tmp);
	MUST(write(tmp, TMP_DATA, strlen(TMP_DATA)));
	MUST(lseek(tmp, 5, SEEK_SET));

	int linked = open(linked_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	MUST(linked);
	MUST(write(linked, LINKED_DATA, strlen(LINKED_DATA)));
	MUST(link(linked_path, other_path));
	MUST(unlink(linked_path));
	MUST(lseek(linked, 3, SEEK_SET));
	char *map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, linked, 0);
	if (map == MAP_FAILED)
		MUST(-1);

	int gone = open(gone_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	MUST(gone);
	MUST(write(gone, GONE_DATA, strlen(GONE_DATA)));
	MUST(unlink(gone_path));
	MUST(lseek(gone, 2, SEEK_SET));

	struct stat st;
	MUST(fstat(tmp, &st));
	ino_t tmp_ino = st.st_ino;
	dev_t dev = st.st_dev;
	MUST(fstat(linked, &st));
	ino_t linked_ino = st.st_ino;

	signal(SIGUSR1, on_usr1);
	dprintf(report_fd, "ready %d\n", getpid());
	while (!check_requested) /* polled: a restored task re-enters pause() after a signal that came just before */
		usleep(1000);

	CHECK(fstat(tmp, &st) == 0 && st.st_ino == tmp_ino && st.st_dev == dev, "O_TMPFILE fd %d is the same inode (%lu)", tmp, (unsigned long)tmp_ino);
	CHECK(st.st_nlink == 0 && deleted_link(tmp), "O_TMPFILE file has no name again (nlink %lu)", (unsigned long)st.st_nlink);
	CHECK(contents_are(tmp, TMP_DATA) && lseek(tmp, 0, SEEK_CUR) == 5, "O_TMPFILE contents and offset 5");

	struct stat other;
	CHECK(fstat(linked, &st) == 0 && stat(other_path, &other) == 0 && st.st_ino == linked_ino && other.st_ino == linked_ino && st.st_dev == other.st_dev,
	      "unlinked file is still the inode of %s", other_path);
	CHECK(st.st_nlink == 1 && deleted_link(linked), "unlinked file keeps one link, its own name still gone (nlink %lu)", (unsigned long)st.st_nlink);
	CHECK(contents_are(linked, LINKED_DATA) && lseek(linked, 0, SEEK_CUR) == 3, "unlinked file contents and offset 3");
	int through = open(other_path, O_RDONLY);
	CHECK(write(linked, "XY", 2) == 2 && through >= 0 && pread(through, (char[2]){ 0 }, 2, 3) == 2, "write through the fd at offset 3");
	char seen[3] = { 0 };
	CHECK(through >= 0 && pread(through, seen, 2, 3) == 2 && memcmp(seen, "XY", 2) == 0, "the write shows through %s (%s)", other_path, seen);

	map[0] = 'Z';
	char first = 0;
	CHECK(memcmp(map + 3, "XY", 2) == 0 && pread(through, &first, 1, 0) == 1 && first == 'Z', "the shared mapping is the same file: it sees the write, %s sees its own", other_path);

	CHECK(fstat(gone, &st) == 0 && st.st_nlink == 0 && deleted_link(gone), "file with no link left is deleted again");
	CHECK(contents_are(gone, GONE_DATA) && lseek(gone, 0, SEEK_CUR) == 2, "its contents and offset 2 (a copy)");

	dprintf(report_fd, "done %d\n", failures);
	return failures;
}
