// SPDX-License-Identifier: MIT

// Fetch a token from tokenbrokerd over its Unix socket with an http.Client
// whose transport dials the socket, then call an API with it; or let the
// broker call the API (its proxy route), so this program never holds the
// token. Standard library only (Debian 12: apt install golang-go).
//
//	go run broker-token.go NAME [API_URL]
//	go run broker-token.go NAME /PATH   # GET the provider's api_url + /PATH through the broker
//
// The socket is $TOKENBROKER_SOCKET, else /run/tokenbroker/tokenbroker.sock.
// The token is never printed.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

type tokenAnswer struct {
	ExpiresIn int64             `json:"expires_in"`
	Headers   map[string]string `json:"headers"`
	Query     map[string]string `json:"query"`
	Error     string            `json:"error"`
	ErrorDesc string            `json:"error_description"`
}

// brokerClient speaks HTTP over the broker's Unix socket: every request
// goes to the socket whatever the URL's host. Use http://localhost/...: the
// proxy route refuses a Host header that is not a loopback name (or the
// API origin's own host), so that no request can name another origin.
func brokerClient() *http.Client {
	sock := os.Getenv("TOKENBROKER_SOCKET")
	if sock == "" {
		sock = "/run/tokenbroker/tokenbroker.sock"
	}
	return &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			},
		},
	}
}

func brokerToken(c *http.Client, name string) (*tokenAnswer, error) {
	resp, err := c.Get("http://localhost/v1/connections/" + url.PathEscape(name) + "/token?min_ttl=60")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var t tokenAnswer
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&t); err != nil && resp.StatusCode == 200 {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("broker: HTTP %d %s %s", resp.StatusCode, t.Error, t.ErrorDesc)
	}
	return &t, nil
}

func main() {
	if len(os.Args) != 2 && len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: broker-token NAME [API_URL | /PATH]")
		os.Exit(2)
	}
	if len(os.Args) == 3 && strings.HasPrefix(os.Args[2], "/") {
		resp, err := brokerClient().Get("http://localhost/v1/connections/" + url.PathEscape(os.Args[1]) + "/proxy" + os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		fmt.Printf("GET %s through the broker -> HTTP %d\n%s\n", os.Args[2], resp.StatusCode, body)
		return
	}
	t, err := brokerToken(brokerClient(), os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("token of %s: expires in %d s\n", os.Args[1], t.ExpiresIn)
	if len(os.Args) == 3 {
		u, err := url.Parse(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		// "headers" (and "query") carry the token as the provider's usage rule says
		q := u.Query()
		for k, v := range t.Query {
			q.Set(k, v)
		}
		u.RawQuery = q.Encode()
		req, _ := http.NewRequest("GET", u.String(), nil)
		for k, v := range t.Headers {
			req.Header.Set(k, v)
		}
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		fmt.Printf("GET %s -> HTTP %d\n%s\n", os.Args[2], resp.StatusCode, body)
	}
}
