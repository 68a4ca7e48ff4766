<?php
// Tests of Duejob.php against a real daemon: `DUEJOB_SOCKET=... php test_duejob.php`.
// Run by the Rust suite (tests/clients.rs), which restarts the daemon when this prints
// `restart` and says `go` on stdin: the client must reconnect by itself.

declare(strict_types=1);

require __DIR__ . '/Duejob.php';

function check(bool $cond, $what): void
{
    if (!$cond) {
        throw new RuntimeException('check failed: ' . json_encode($what));
    }
}

function expect(string $cls, callable $fn): Duejob\Error
{
    try {
        $fn();
    } catch (Duejob\Error $e) {
        check($e instanceof $cls && $e->getErrorCode() === $cls::CODE && $e->getMessage() !== '', [$cls, get_class($e), $e->getMessage()]);
        return $e;
    }
    throw new RuntimeException("expected $cls");
}

// A daemon (another PHP process) that dies after reading its first request (the reply is
// lost), then, if $answerSecond, answers the next connection's request as a duplicate.
function fakeDaemon(string $path, bool $answerSecond)
{
    $code = '$srv = stream_socket_server("unix://" . $argv[1]); echo "up\n";'
        . 'for ($n = 0; $n < (int) $argv[2]; $n++) { $c = stream_socket_accept($srv, 10);'
        . 'fgets($c); fwrite($c, "{\"ok\":true,\"protocol\":1}\n"); fgets($c);'
        . 'if ($n == 1) fwrite($c, "{\"ok\":true,\"id\":5,\"lsn\":9,\"duplicate\":true}\n");'
        . 'fclose($c); } fclose($srv);';
    $p = proc_open([PHP_BINARY, '-r', $code, $path, $answerSecond ? '2' : '1'], [1 => ['pipe', 'w']], $pipes);
    check(trim((string) fgets($pipes[1])) === 'up', 'fake daemon up');
    return [$p, $pipes];
}

// A reply lost after the request went out: a keyed submit is sent again (and is a duplicate),
// a keyless one throws ConnectionLost rather than risk a second job.
$path = sys_get_temp_dir() . '/duejob-fake-' . getmypid() . '.sock';
@unlink($path);
[$p] = fakeDaemon($path, false);
$e = expect(Duejob\ConnectionLost::class, fn () => (new Duejob\Client($path, 5.0))->submit('q', 'noop'));
check(str_contains($e->getMessage(), 'may or may not be in the log'), $e->getMessage());
proc_close($p);
@unlink($path);
[$p] = fakeDaemon($path, true);
$r = (new Duejob\Client($path, 5.0))->submit('q', 'noop', null, ['key' => 'k']);
check($r === ['ok' => true, 'id' => 5, 'lsn' => 9, 'duplicate' => true], $r);
proc_close($p);
@unlink($path);

$c = new Duejob\Client(null, 30.0);
$r = $c->submit('default', 'noop');
check(is_int($r['id']) && $r['duplicate'] === false, $r);
check($c->wait($r['id'])['state'] === 'succeeded', 'first job');
$first = $r['id'];

$a = $c->submit('default', 'noop', null, ['key' => 'php-k1']);
$b = $c->submit('default', 'noop', null, ['key' => 'php-k1']);
check($b['duplicate'] === true && $b['id'] === $a['id'], [$a, $b]);

$ids = $c->submitBatch(array_fill(0, 3, ['queue' => 'default', 'kind' => 'noop']));
check(count($ids) === 3 && count(array_unique($ids)) === 3, $ids);

$many = $c->submitMany([
    ['queue' => 'default', 'kind' => 'noop'],
    ['queue' => 'nope', 'kind' => 'noop'],
    ['queue' => 'default', 'kind' => 'noop', 'delay_ms' => 3600000],
]);
check(is_array($many[0]) && $many[0]['ok'] === true, 'many[0]');
check($many[1] instanceof Duejob\UnknownQueue, 'many[1]');
check($c->status($many[2]['id'])['state'] === 'scheduled', 'many[2]');

expect(Duejob\NotFound::class, fn () => $c->status(99999999));
expect(Duejob\InvalidPayload::class, fn () => $c->submit('default', 'exec', ['argv' => []]));
expect(Duejob\UnknownKind::class, fn () => $c->submit('default', 'fly'));
expect(Duejob\WrongState::class, fn () => $c->cancel($first));
$job = $c->wait($c->submit('default', 'exec', ['argv' => ['sh', '-c', 'exit 0']], ['max_attempts' => 1, 'timeout_ms' => 10000])['id']);
check($job['state'] === 'succeeded', $job);
expect(Duejob\Timeout::class, fn () => $c->wait($many[2]['id'], 0.1));

// The daemon restarts (SIGKILL): the next requests reconnect by themselves.
echo "restart\n";
check(trim((string) fgets(STDIN)) === 'go', 'go');
// The first request finds the connection dead before a byte went out: sent again, keyless.
$keyless = $c->submit('default', 'noop');
check($c->wait($keyless['id'])['state'] === 'succeeded', 'keyless after restart');
$r = $c->submit('default', 'noop', null, ['key' => 'php-after-restart']);
$again = $c->submit('default', 'noop', null, ['key' => 'php-after-restart']);
check($again['duplicate'] === true && $again['id'] === $r['id'], [$r, $again]);
check($c->wait($r['id'])['state'] === 'succeeded', 'after restart');
check($c->status($first)['state'] === 'succeeded', 'history');
check($c->status($many[2]['id'])['state'] === 'scheduled', 'recovered');
$c->close();
echo "ok\n";
