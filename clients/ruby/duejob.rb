# frozen_string_literal: true

# A client for duejob's Unix-socket protocol (docs/protocol.md). One file, standard library only.
#
#   require_relative "duejob"
#   c = Duejob::Client.new                      # $DUEJOB_SOCKET or ./duejob-data/duejob.sock
#   job = c.submit("notifications", "exec", { argv: ["send-sms", "+15551234", "hi"] },
#                  key: "sms-order-42")         # returns once the job is durable
#   puts c.wait(job["id"])["state"]             # succeeded, dead or cancelled
#
# Reconnecting: when the daemon restarts, the next request reconnects (for up to
# reconnect_timeout seconds) and is sent again if that is safe: a request that never reached the
# daemon, a read-only one (status, stats, ...), or a submit whose jobs all carry a key (the daemon
# discards the duplicate and answers with the first job's id). A keyless submit whose reply was
# lost raises Duejob::ConnectionLost: it may or may not be in the log.

require "json"
require "socket"

module Duejob
  DEFAULT_SOCKET = "./duejob-data/duejob.sock"
  TERMINAL = %w[succeeded dead cancelled].freeze

  # The daemon refused a request: #code is the protocol's error code.
  class Error < StandardError
    attr_reader :code, :reply

    def initialize(message, code = nil, reply = {})
      super(message)
      @code = code || self.class::CODE
      @reply = reply
    end
  end

  # The daemon went away and the request could not safely be sent again.
  class ConnectionLost < Error
    CODE = "connection_lost"
  end

  # #wait gave up before the job ended.
  class Timeout < Error
    CODE = "timeout"
  end

  CODES = {}
  {
    "InvalidJson" => "invalid_json", "BadRequest" => "bad_request",
    "LineTooLong" => "line_too_long", "UnknownOp" => "unknown_op",
    "UnknownQueue" => "unknown_queue", "UnknownKind" => "unknown_kind",
    "InvalidPayload" => "invalid_payload", "NotFound" => "not_found",
    "WrongState" => "wrong_state", "WalFailed" => "wal_failed",
    "WalUncertain" => "wal_uncertain", "ShuttingDown" => "shutting_down",
    "Forbidden" => "forbidden", "Busy" => "busy", "CheckpointFailed" => "checkpoint_failed",
    "CatalogUnavailable" => "catalog_unavailable"
  }.each do |name, code|
    cls = Class.new(Error)
    cls.const_set(:CODE, code)
    const_set(name, cls)
    CODES[code] = cls
  end
  Error.const_set(:CODE, "unknown")

  # Refusals that recorded nothing and pass once the daemon is back.
  TRANSIENT = %w[shutting_down busy].freeze
  # Ops that change nothing.
  READ_ONLY = %w[hello status stats log jobs dead_list alerts].freeze

  def self.error_of(reply)
    err = reply["error"] || {}
    code = err["code"] || "unknown"
    (CODES[code] || Error).new(err["message"] || "request refused", code, reply)
  end

  def self.safe_to_resend?(req)
    case req[:op]
    when *READ_ONLY then true
    when "submit" then !req[:key].nil? && !req[:key].empty?
    when "submit_batch" then req[:jobs].all? { |j| j[:key] && !j[:key].empty? }
    else false
    end
  end

  def self.job(queue, kind, payload = nil, key: nil, due_in_ms: nil, delay_ms: nil,
               max_attempts: nil, timeout_ms: nil)
    j = { queue: queue, kind: kind }
    { payload: payload, key: key, due_in_ms: due_in_ms, delay_ms: delay_ms,
      max_attempts: max_attempts, timeout_ms: timeout_ms }.each { |k, v| j[k] = v unless v.nil? }
    j
  end

  # One connection to a daemon; not for use by several threads at once.
  class Client
    attr_reader :path

    def initialize(path = nil, reconnect_timeout: 10.0, name: "duejob.rb")
      @path = path || ENV["DUEJOB_SOCKET"] || DEFAULT_SOCKET
      @reconnect_timeout = reconnect_timeout
      @name = name
      @sock = nil
      @buf = +""
      begin
        connect
      rescue SystemCallError, IOError => e
        raise ConnectionLost.new("cannot connect to #{@path}: #{e.message} (is the daemon " \
                                 "running? `duejob serve`; DUEJOB_SOCKET names another socket)")
      end
    end

    def close
      @sock&.close
      @sock = nil
    end

    # Submits one job; returns {"id", "lsn", "duplicate"} once it is durable.
    def submit(queue, kind, payload = nil, **opts)
      request({ op: "submit" }.merge(Duejob.job(queue, kind, payload, **opts)))
    end

    # Submits jobs atomically (all or none); each a hash {queue:, kind:, payload:, key:, ...}.
    def submit_batch(jobs)
      request({ op: "submit_batch", jobs: jobs.map { |j| job_of(j) } })["ids"]
    end

    # Pipelines one submit per job (sent together, answered in order): per job, its reply or
    # the Duejob::Error it got.
    def submit_many(jobs)
      pipeline(jobs.map { |j| { op: "submit" }.merge(job_of(j)) })
    end

    def status(id)
      request({ op: "status", id: id })["job"]
    end

    def stats
      request({ op: "stats" })
    end

    def cancel(id)
      request({ op: "cancel", id: id })
    end

    # Polls until the job is in one of states (by default: ended); returns it.
    def wait(id, timeout: 60.0, states: TERMINAL, poll: 0.05)
      until_t = now + timeout
      loop do
        job = status(id)
        return job if states.include?(job["state"])
        raise Timeout, "job #{id} is still #{job['state']} after #{timeout} s" if now >= until_t

        sleep poll
      end
    end

    # Sends one request; returns its ok reply or raises its Duejob::Error.
    def request(req)
      reply = pipeline([req]).first
      raise reply if reply.is_a?(Error)

      reply
    end

    # Sends requests in one write and reads their replies in order; each is the reply or the
    # Duejob::Error it got. Reconnects and sends again what is safe (see the file's top).
    def pipeline(reqs)
      deadline = now + @reconnect_timeout
      data = reqs.map { |r| "#{JSON.generate(r)}\n" }.join
      safe = reqs.all? { |r| Duejob.safe_to_resend?(r) }
      loop do
        written = 0
        begin
          connect if @sock.nil?
          written += @sock.syswrite(data.byteslice(written..)) while written < data.bytesize
          replies = reqs.map { read_reply }
        rescue SystemCallError, IOError => e
          close
          if written.positive? && !safe
            raise ConnectionLost, "the daemon went away before answering (#{e.message}); a " \
                                  "submit without a key may or may not be in the log"
          end
          pause(deadline, e)
          next
        end
        out = replies.map { |r| r["ok"] ? r : Duejob.error_of(r) }
        transient = out.select { |r| r.is_a?(Error) && TRANSIENT.include?(r.code) }
        if !transient.empty? && (safe || transient.size == out.size)
          close
          pause(deadline, transient.first)
          next
        end
        return out
      end
    end

    private

    def job_of(j)
      j = j.transform_keys(&:to_sym)
      Duejob.job(j.delete(:queue), j.delete(:kind), j.delete(:payload), **j)
    end

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def pause(deadline, cause)
      if now >= deadline
        raise cause if cause.is_a?(Error)

        raise ConnectionLost, "cannot reach the daemon at #{@path}: #{cause.message}"
      end
      sleep 0.05
    end

    def connect
      @sock = UNIXSocket.new(@path)
      @buf = +""
      @sock.syswrite("#{JSON.generate({ op: 'hello', client: @name })}\n")
      hello = read_reply
      return if hello["ok"]

      err = Duejob.error_of(hello)
      close
      raise Errno::ECONNREFUSED, err.message if TRANSIENT.include?(err.code)

      raise err
    end

    def read_reply
      until (i = @buf.index("\n"))
        chunk = @sock.readpartial(65_536)
        @buf << chunk
      end
      line = @buf.slice!(0..i)
      JSON.parse(line)
    rescue EOFError
      raise Errno::ECONNRESET, "the daemon closed the connection"
    end
  end
end
