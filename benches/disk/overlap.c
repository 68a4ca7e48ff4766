// 50 KiB pwrite + fdatasync loops, N writers on one file (syncs overlap), in a fallocated or a
// zero-filled 1 GiB file (BENCHMARKS.md, "Issue 15, third session"). Not part of CI.
// gcc -O2 -pthread -o /tmp/overlap benches/disk/overlap.c && /tmp/overlap THREADS 51200 SECONDS falloc|zero
// (the file goes in /tmp/cb/, which must exist)
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>
#include <time.h>
#include <stdatomic.h>
#include <string.h>
static int fd; static atomic_long off; static long chunk; static double secs; static atomic_long nsync;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static void* run(void*a){char*buf=malloc(chunk);memset(buf,'x',chunk);double end=now()+secs;
 while(now()<end){long o=atomic_fetch_add(&off,chunk);pwrite(fd,buf,chunk,o);fdatasync(fd);atomic_fetch_add(&nsync,1);}return 0;}
int main(int c,char**v){int th=atoi(v[1]);chunk=atol(v[2]);secs=atof(v[3]);const char*mode=v[4];
 char p[]="/tmp/cb/f.XXXXXX";fd=mkstemp(p);unlink(p);long size=1L<<30;
 if(!strcmp(mode,"falloc"))fallocate(fd,0,0,size);else{char*z=calloc(1,1<<20);for(long o=0;o<size;o+=1<<20)pwrite(fd,z,1<<20,o);fdatasync(fd);}
 pthread_t t[16];double s=now();for(int i=0;i<th;i++)pthread_create(&t[i],0,run,0);for(int i=0;i<th;i++)pthread_join(t[i],0);
 double e=now()-s;printf("%s threads=%d chunk=%ld: %.0f syncs/s, %.1f MB/s, mean %.0f us per sync per thread\n",mode,th,chunk,nsync/e,off/e/1e6,e*th/nsync*1e6);}
