/*
 * dead-leader: the main thread calls pthread_exit() and stays a zombie while a second thread
 * runs on (pauses forever). criu-ts refuses to dump it, naming why.
 */
#include <pthread.h>
#include <unistd.h>

static void *run(void *arg)
{
	for (;;)
		pause();
	return arg;
}

int main(void)
{
	pthread_t th;
	pthread_create(&th, NULL, run, NULL);
	pthread_exit(NULL);
}
