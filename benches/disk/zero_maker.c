// One writer of 50 KiB pwrite + fdatasync beside a "maker" zero-filling 64 MiB files in pieces
// (BENCHMARKS.md, "Issue 15, third session"). Not part of CI.
// gcc -O2 -pthread -o /tmp/zm benches/disk/zero_maker.c
// /tmp/zm 51200 SECONDS falloc|zero PIECE_BYTES SYNC_EVERY_BYTES PAUSE_US   (PIECE 0: no maker; files in /tmp/cb/)
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>
#include <time.h>
#include <stdatomic.h>
#include <string.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static double secs; static long mkchunk, mksync; static atomic_int stop; static atomic_long mkbytes; static long pace_us;
static void* maker(void*a){char*z=calloc(1,mkchunk);while(!stop){char p[]="/tmp/cb/m.XXXXXX";int f=mkstemp(p);unlink(p);long un=0;
 for(long o=0;o<(64L<<20)&&!stop;o+=mkchunk){pwrite(f,z,mkchunk,o);un+=mkchunk;mkbytes+=mkchunk;if(un>=mksync){fdatasync(f);un=0;} if(pace_us)usleep(pace_us);} fdatasync(f);close(f);}return 0;}
int main(int c,char**v){long chunk=atol(v[1]);secs=atof(v[2]);const char*mode=v[3];mkchunk=atol(v[4]);mksync=atol(v[5]);pace_us=atol(v[6]);
 char p[]="/tmp/cb/f.XXXXXX";int fd=mkstemp(p);unlink(p);long size=1L<<30;
 if(!strcmp(mode,"falloc"))fallocate(fd,0,0,size);else{char*z=calloc(1,1<<20);for(long o=0;o<size;o+=1<<20)pwrite(fd,z,1<<20,o);fdatasync(fd);}
 pthread_t t; if(mkchunk>0)pthread_create(&t,0,maker,0);
 char*buf=malloc(chunk);memset(buf,'x',chunk);double s=now(),end=s+secs;long off=0,n=0;
 while(now()<end){pwrite(fd,buf,chunk,off);off+=chunk;fdatasync(fd);n++;}
 double e=now()-s;stop=1;if(mkchunk>0)pthread_join(t,0);
 printf("%s mk=%ld/%ld pace=%ld: WAL %.0f syncs/s (%.0f us), maker %.0f MB/s\n",mode,mkchunk,mksync,pace_us,n/e,e/n*1e6,mkbytes/e/1e6);}
