/*
 * orphan-file-keeper: files whose directories changed under them after they were opened.
 *
 *   orphan-file-keeper REPORT_FILE WORK_DIR
 *
 * Protocol as tests/state-keeper.c ("ready <pid>", SIGUSR1 -> ok/FAIL lines, "done N").
 * - WORK_DIR/gone/deeper/file: written, read part way, then unlinked, and both of its directories
 *   removed: a deleted file whose path no longer has a parent (restore must make the directories
 *   for as long as it needs the name, and remove them again).
 * - WORK_DIR/old/kept: open at an offset, its directory then renamed to WORK_DIR/new: the same
 *   file under a path it was not opened by.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keeper.h"

static const char GONE_DATA[] = "contents of a file whose directories are gone";
static const char KEPT_DATA[] = "contents of a file whose directory was renamed";

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	if (keeper_open_report(argv[1]) < 0)
		return 3;
	const char *dir = argv[2];
	char path[4200], path2[4200];

	snprintf(path, sizeof(path), "%s/gone", dir);
	MUST(mkdir(path, 0755));
	snprintf(path, sizeof(path), "%s/gone/deeper", dir);
	MUST(mkdir(path, 0755));
	snprintf(path, sizeof(path), "%s/gone/deeper/file", dir);
	int gone = open(path, O_RDWR | O_CREAT | O_EXCL, 0640);
	MUST(gone);
	MUST(write(gone, GONE_DATA, sizeof(GONE_DATA)) == (ssize_t)sizeof(GONE_DATA) ? 0 : -1);
	MUST(lseek(gone, 9, SEEK_SET));
	MUST(unlink(path));
	snprintf(path, sizeof(path), "%s/gone/deeper", dir);
	MUST(rmdir(path));
	snprintf(path, sizeof(path), "%s/gone", dir);
	MUST(rmdir(path));

	snprintf(path, sizeof(path), "%s/old", dir);
	MUST(mkdir(path, 0755));
	snprintf(path, sizeof(path), "%s/old/kept", dir);
	int kept = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
	MUST(kept);
	MUST(write(kept, KEPT_DATA, sizeof(KEPT_DATA)) == (ssize_t)sizeof(KEPT_DATA) ? 0 : -1);
	MUST(lseek(kept, 12, SEEK_SET));
	snprintf(path, sizeof(path), "%s/old", dir);
	snprintf(path2, sizeof(path2), "%s/new", dir);
	MUST(rename(path, path2));

	signal(SIGUSR1, on_usr1);
	say("ready %d\n", getpid());
	for (;;) {
		while (!check_requested) /* polled: a restored task re-enters pause() after a signal that came just before */
			usleep(1000);
		check_requested = 0;

		char buf[128] = { 0 };
		struct stat st;
		CHECK(fstat(gone, &st) == 0 && st.st_nlink == 0 && (st.st_mode & 0777) == 0640, "the deleted file is still deleted, mode 0640");
		CHECK(pread(gone, buf, sizeof(buf), 0) == (ssize_t)sizeof(GONE_DATA) && strcmp(buf, GONE_DATA) == 0, "the deleted file's contents");
		CHECK(lseek(gone, 0, SEEK_CUR) == 9, "the deleted file's offset");
		snprintf(path, sizeof(path), "%s/gone", dir);
		CHECK(access(path, F_OK) != 0, "its directories are gone again");

		memset(buf, 0, sizeof(buf));
		CHECK(fstat(kept, &st) == 0 && st.st_nlink == 1, "the file in the renamed directory keeps its link");
		CHECK(pread(kept, buf, sizeof(buf), 0) == (ssize_t)sizeof(KEPT_DATA) && strcmp(buf, KEPT_DATA) == 0, "its contents");
		CHECK(lseek(kept, 0, SEEK_CUR) == 12, "its offset");
		char link[4200], proc[64];
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", kept);
		ssize_t n = readlink(proc, link, sizeof(link) - 1);
		snprintf(path2, sizeof(path2), "%s/new/kept", dir);
		CHECK(n > 0 && (link[n] = 0, strcmp(link, path2) == 0), "it is open by its new path");
		/* A write through it reaches the file at its new name. */
		CHECK(pwrite(kept, "X", 1, 0) == 1, "write through it");
		int again = open(path2, O_RDONLY);
		CHECK(again >= 0 && pread(again, buf, 1, 0) == 1 && buf[0] == 'X', "the write shows at the new name");
		if (again >= 0)
			close(again);
		MUST(pwrite(kept, "c", 1, 0) == 1 ? 0 : -1);
		say("done %d\n", failures);
	}
}
