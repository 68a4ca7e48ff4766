<?php
// A client for duejob's Unix-socket protocol (docs/protocol.md). One file, no extensions
// beyond PHP's standard ones (json, sockets via streams).
//
//   require 'Duejob.php';
//   $c = new Duejob\Client();                    // $DUEJOB_SOCKET or ./duejob-data/duejob.sock
//   $job = $c->submit('notifications', 'exec', ['argv' => ['send-sms', '+15551234', 'hi']],
//                     ['key' => 'sms-order-42']);  // returns once the job is durable
//   echo $c->wait($job['id'])['state'];          // succeeded, dead or cancelled
//
// Reconnecting: when the daemon restarts, the next request reconnects (for up to
// reconnect_timeout seconds) and is sent again if that is safe: a request that never reached the
// daemon, a read-only one (status, stats, ...), or a submit whose jobs all carry a key (the daemon
// discards the duplicate and answers with the first job's id). A keyless submit whose reply was
// lost throws Duejob\ConnectionLost: it may or may not be in the log.

declare(strict_types=1);

namespace Duejob;

/** The daemon refused a request: getErrorCode() is the protocol's error code. */
class Error extends \RuntimeException
{
    public const CODE = 'unknown';
    public string $errorCode;
    public array $reply;

    public function __construct(string $message, ?string $code = null, array $reply = [])
    {
        parent::__construct($message);
        $this->errorCode = $code ?? static::CODE;
        $this->reply = $reply;
    }

    public function getErrorCode(): string
    {
        return $this->errorCode;
    }
}

/** The daemon went away and the request could not safely be sent again. */
class ConnectionLost extends Error { public const CODE = 'connection_lost'; }
/** wait() gave up before the job ended. */
class Timeout extends Error { public const CODE = 'timeout'; }
class InvalidJson extends Error { public const CODE = 'invalid_json'; }
class BadRequest extends Error { public const CODE = 'bad_request'; }
class LineTooLong extends Error { public const CODE = 'line_too_long'; }
class UnknownOp extends Error { public const CODE = 'unknown_op'; }
class UnknownQueue extends Error { public const CODE = 'unknown_queue'; }
class UnknownKind extends Error { public const CODE = 'unknown_kind'; }
class InvalidPayload extends Error { public const CODE = 'invalid_payload'; }
class NotFound extends Error { public const CODE = 'not_found'; }
class WrongState extends Error { public const CODE = 'wrong_state'; }
class WalFailed extends Error { public const CODE = 'wal_failed'; }
class WalUncertain extends Error { public const CODE = 'wal_uncertain'; }
class ShuttingDown extends Error { public const CODE = 'shutting_down'; }
class Forbidden extends Error { public const CODE = 'forbidden'; }
class Busy extends Error { public const CODE = 'busy'; }
class CheckpointFailed extends Error { public const CODE = 'checkpoint_failed'; }
class CatalogUnavailable extends Error { public const CODE = 'catalog_unavailable'; }

/** A socket-level failure (internal: becomes a retry or a ConnectionLost). */
class IoFailure extends \RuntimeException {}

/** One connection to a daemon. */
class Client
{
    public const DEFAULT_SOCKET = './duejob-data/duejob.sock';
    public const TERMINAL = ['succeeded', 'dead', 'cancelled'];
    private const TRANSIENT = ['shutting_down', 'busy'];
    private const READ_ONLY = ['hello', 'status', 'stats', 'log', 'jobs', 'dead_list', 'alerts'];
    private const CODES = [
        'invalid_json' => InvalidJson::class, 'bad_request' => BadRequest::class,
        'line_too_long' => LineTooLong::class, 'unknown_op' => UnknownOp::class,
        'unknown_queue' => UnknownQueue::class, 'unknown_kind' => UnknownKind::class,
        'invalid_payload' => InvalidPayload::class, 'not_found' => NotFound::class,
        'wrong_state' => WrongState::class, 'wal_failed' => WalFailed::class,
        'wal_uncertain' => WalUncertain::class, 'shutting_down' => ShuttingDown::class,
        'forbidden' => Forbidden::class, 'busy' => Busy::class,
        'checkpoint_failed' => CheckpointFailed::class,
        'catalog_unavailable' => CatalogUnavailable::class,
    ];

    public string $path;
    private float $reconnectTimeout;
    private string $name;
    /** @var resource|null */
    private $sock = null;
    private string $buf = '';

    public function __construct(?string $path = null, float $reconnectTimeout = 10.0, string $name = 'Duejob.php')
    {
        $this->path = $path ?? (getenv('DUEJOB_SOCKET') ?: self::DEFAULT_SOCKET);
        $this->reconnectTimeout = $reconnectTimeout;
        $this->name = $name;
        try {
            $this->connect();
        } catch (IoFailure $e) {
            throw new ConnectionLost("cannot connect to {$this->path}: {$e->getMessage()} (is the daemon running? `duejob serve`; DUEJOB_SOCKET names another socket)");
        }
    }

    public function close(): void
    {
        if ($this->sock !== null) {
            fclose($this->sock);
            $this->sock = null;
        }
    }

    /** Submits one job; returns ['id', 'lsn', 'duplicate'] once it is durable. Options: key,
     *  due_in_ms, delay_ms, max_attempts, timeout_ms. */
    public function submit(string $queue, string $kind, $payload = null, array $opts = []): array
    {
        return $this->request(['op' => 'submit'] + self::job($queue, $kind, $payload, $opts));
    }

    /** Submits jobs atomically (all or none); each ['queue' => ..., 'kind' => ..., ...]. */
    public function submitBatch(array $jobs): array
    {
        return $this->request(['op' => 'submit_batch', 'jobs' => array_map([self::class, 'jobOf'], $jobs)])['ids'];
    }

    /** Pipelines one submit per job (sent together, answered in order): per job, its reply or
     *  the Duejob\Error it got. */
    public function submitMany(array $jobs): array
    {
        return $this->pipeline(array_map(fn ($j) => ['op' => 'submit'] + self::jobOf($j), $jobs));
    }

    public function status(int $id): array
    {
        return $this->request(['op' => 'status', 'id' => $id])['job'];
    }

    public function stats(): array
    {
        return $this->request(['op' => 'stats']);
    }

    public function cancel(int $id): array
    {
        return $this->request(['op' => 'cancel', 'id' => $id]);
    }

    /** Polls until the job is in one of $states (by default: ended); returns it. */
    public function wait(int $id, float $timeout = 60.0, array $states = self::TERMINAL, float $poll = 0.05): array
    {
        $until = microtime(true) + $timeout;
        while (true) {
            $job = $this->status($id);
            if (in_array($job['state'], $states, true)) {
                return $job;
            }
            if (microtime(true) >= $until) {
                throw new Timeout("job $id is still {$job['state']} after $timeout s");
            }
            usleep((int) ($poll * 1e6));
        }
    }

    /** Sends one request; returns its ok reply or throws its Duejob\Error. */
    public function request(array $req): array
    {
        $reply = $this->pipeline([$req])[0];
        if ($reply instanceof Error) {
            throw $reply;
        }
        return $reply;
    }

    /** Sends requests in one write and reads their replies in order; each is the reply or the
     *  Duejob\Error it got. Reconnects and sends again what is safe (see the file's top). */
    public function pipeline(array $reqs): array
    {
        $deadline = microtime(true) + $this->reconnectTimeout;
        $data = '';
        foreach ($reqs as $r) {
            $data .= self::encode($r) . "\n";
        }
        $safe = true;
        foreach ($reqs as $r) {
            $safe = $safe && self::safeToResend($r);
        }
        while (true) {
            $written = 0;
            try {
                if ($this->sock === null) {
                    $this->connect();
                }
                while ($written < strlen($data)) {
                    $n = @fwrite($this->sock, substr($data, $written));
                    if ($n === false || $n === 0) {
                        throw new IoFailure('the daemon closed the connection');
                    }
                    $written += $n;
                }
                $replies = [];
                foreach ($reqs as $_) {
                    $replies[] = $this->readReply();
                }
            } catch (IoFailure $e) {
                $this->close();
                if ($written > 0 && !$safe) {
                    throw new ConnectionLost("the daemon went away before answering ({$e->getMessage()}); a submit without a key may or may not be in the log");
                }
                $this->pause($deadline, $e);
                continue;
            }
            $out = array_map(fn ($r) => ($r['ok'] ?? false) ? $r : self::errorOf($r), $replies);
            $transient = array_values(array_filter($out, fn ($r) => $r instanceof Error && in_array($r->errorCode, self::TRANSIENT, true)));
            if ($transient && ($safe || count($transient) === count($out))) {
                $this->close();
                $this->pause($deadline, $transient[0]);
                continue;
            }
            return $out;
        }
    }

    private function pause(float $deadline, \Throwable $cause): void
    {
        if (microtime(true) >= $deadline) {
            if ($cause instanceof Error) {
                throw $cause;
            }
            throw new ConnectionLost("cannot reach the daemon at {$this->path}: {$cause->getMessage()}");
        }
        usleep(50000);
    }

    private function connect(): void
    {
        $s = @stream_socket_client('unix://' . $this->path, $errno, $errstr, 5.0);
        if ($s === false) {
            throw new IoFailure("$errstr ($errno)");
        }
        $this->sock = $s;
        $this->buf = '';
        if (@fwrite($s, self::encode(['op' => 'hello', 'client' => $this->name]) . "\n") === false) {
            throw new IoFailure('cannot write to the socket');
        }
        $hello = $this->readReply();
        if (!($hello['ok'] ?? false)) {
            $err = self::errorOf($hello);
            $this->close();
            if (in_array($err->errorCode, self::TRANSIENT, true)) {
                throw new IoFailure($err->getMessage());
            }
            throw $err;
        }
    }

    private function readReply(): array
    {
        while (($i = strpos($this->buf, "\n")) === false) {
            $chunk = @fread($this->sock, 65536);
            if ($chunk === false || ($chunk === '' && feof($this->sock))) {
                throw new IoFailure('the daemon closed the connection');
            }
            $this->buf .= $chunk;
        }
        $line = substr($this->buf, 0, $i);
        $this->buf = substr($this->buf, $i + 1);
        return json_decode($line, true, 512, JSON_THROW_ON_ERROR | JSON_BIGINT_AS_STRING);
    }

    private static function encode(array $req): string
    {
        return json_encode($req, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
    }

    private static function errorOf(array $reply): Error
    {
        $err = $reply['error'] ?? [];
        $code = $err['code'] ?? 'unknown';
        $cls = self::CODES[$code] ?? Error::class;
        return new $cls($err['message'] ?? 'request refused', $code, $reply);
    }

    private static function safeToResend(array $req): bool
    {
        $op = $req['op'] ?? '';
        if (in_array($op, self::READ_ONLY, true)) {
            return true;
        }
        if ($op === 'submit') {
            return ($req['key'] ?? '') !== '';
        }
        if ($op === 'submit_batch') {
            foreach ($req['jobs'] as $j) {
                if (($j['key'] ?? '') === '') {
                    return false;
                }
            }
            return true;
        }
        return false;
    }

    private static function job(string $queue, string $kind, $payload, array $opts): array
    {
        $j = ['queue' => $queue, 'kind' => $kind];
        if ($payload !== null) {
            // An empty PHP array is a list to json_encode: a payload is an object.
            $j['payload'] = $payload === [] ? new \stdClass() : $payload;
        }
        foreach (['key', 'due_in_ms', 'delay_ms', 'max_attempts', 'timeout_ms'] as $k) {
            if (isset($opts[$k])) {
                $j[$k] = $opts[$k];
            }
        }
        $unknown = array_diff(array_keys($opts), ['key', 'due_in_ms', 'delay_ms', 'max_attempts', 'timeout_ms']);
        if ($unknown) {
            throw new \InvalidArgumentException('unknown submit option ' . implode(', ', $unknown));
        }
        return $j;
    }

    private static function jobOf(array $j): array
    {
        $queue = $j['queue'];
        $kind = $j['kind'];
        $payload = $j['payload'] ?? null;
        unset($j['queue'], $j['kind'], $j['payload']);
        return self::job($queue, $kind, $payload, $j);
    }
}
